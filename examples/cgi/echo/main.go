// Command echo answers with what it was given as a CGI program: the request
// method, path, query, the CGI environment and the body, as one JSON object.
// The integration tests use it to check request round trips and which
// variables reach a worker.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// reply is the JSON document echo writes.
type reply struct {
	Method string            `json:"method"`
	Path   string            `json:"path"`
	Query  string            `json:"query"`
	Env    map[string]string `json:"env"`
	Body   string            `json:"body"`
	UID    int               `json:"uid"`
	PID    int               `json:"pid"`
}

func main() {
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Printf("Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nread body from stdin: %v\n", err)
		return
	}
	r := reply{
		Method: os.Getenv("REQUEST_METHOD"),
		Path:   os.Getenv("SCRIPT_NAME") + os.Getenv("PATH_INFO"),
		Query:  os.Getenv("QUERY_STRING"),
		Env:    map[string]string{},
		Body:   string(body),
		UID:    os.Getuid(),
		PID:    os.Getpid(),
	}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		r.Env[k] = v
	}
	out, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		fmt.Printf("Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nencode reply: %v\n", err)
		return
	}
	fmt.Printf("Content-Type: application/json\r\n\r\n%s\n", out)
}
