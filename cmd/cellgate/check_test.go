package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunCheck(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	valid := write("valid.yaml", `version: 1
tenants: [{name: acme, memory: 256Mi, max_cells: 4, queue: 2, queue_timeout: 1s}]
routes:
  - {name: hello, match: {host: example.com, path: /hello, methods: [GET]}, tenant: acme, program: prog, memory: 32Mi, cpu: 0.5}
`)
	missing := write("missing-program.yaml", "version: 1\nroutes:\n  - {name: gone, match: {path: /}, program: nothing-here}\n")
	invalid := write("invalid.yaml", `version: 1
routes:
  - name: hello
    match: {path: /hello}
    program: prog
    memroy: 32Mi
    cpu: lots
`)

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    []string // substrings of stdout
		wantErr    []string // substrings of stderr
		wantNoWarn bool
	}{
		{
			name: "valid", args: []string{valid}, wantCode: 0,
			wantOut: []string{
				"valid: 1 route(s), 1 tenant(s)",
				"acme    256Mi", // tenant row
				"hello  example.com  /hello  GET      acme    " + prog + "  32Mi    0     0.5  64    30s      10Mi      auto",
			},
			wantNoWarn: true,
		},
		{name: "missing program warns", args: []string{missing}, wantCode: 0,
			wantOut: []string{"gone"}, wantErr: []string{"warning: route gone (line 3):", "no such file"}},
		{name: "invalid", args: []string{invalid}, wantCode: 1, wantErr: []string{
			invalid + `:6: routes[hello].memroy: unknown key (fix: did you mean memory?)`,
			invalid + `:7: routes[hello].cpu: "lots": not a CPU amount`,
			"is not valid: 2 problem(s)",
		}},
		{name: "unreadable", args: []string{filepath.Join(dir, "nope.yaml")}, wantCode: 1, wantErr: []string{"nope.yaml", "no such file"}},
		{name: "no arguments", args: nil, wantCode: 2, wantErr: []string{"want one policy file, got 0", "usage: cellgate check"}},
		{name: "two arguments", args: []string{valid, valid}, wantCode: 2, wantErr: []string{"got 2 arguments"}},
		{name: "unknown flag", args: []string{"-x", valid}, wantCode: 2, wantErr: []string{"flag provided but not defined"}},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantOut: []string{"usage: cellgate check POLICY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runCheck(tt.args, &out, &errOut)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, &out, &errOut)
			}
			for _, s := range tt.wantOut {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, &out)
				}
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, &errOut)
				}
			}
			if tt.wantNoWarn && errOut.Len() > 0 {
				t.Errorf("stderr not empty:\n%s", &errOut)
			}
		})
	}
}

// check is reachable through the dispatcher.
func TestDispatchCheck(t *testing.T) {
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	code := dispatch(context.Background(), []string{"check", filepath.Join("..", "..", "examples", "policy.yaml")}, stdio{out: out, err: out})
	data, _ := os.ReadFile(out.Name())
	if code != 0 || !strings.Contains(string(data), "valid: ") {
		t.Fatalf("cellgate check examples/policy.yaml: exit %d\n%s", code, data)
	}
}
