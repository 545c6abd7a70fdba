// Command malformed writes output that is not a CGI response, for the tests
// that check cellgate answers 502 instead of passing garbage on. ?kind=
// chooses the fault:
//
//	noheader  a body line with no header block (the default)
//	status    a Status header that is not a number
//	empty     nothing at all
//	truncated a header block that never ends
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	kind := "noheader"
	for _, kv := range strings.Split(os.Getenv("QUERY_STRING"), "&") {
		if v, ok := strings.CutPrefix(kv, "kind="); ok {
			kind = v
		}
	}
	switch kind {
	case "noheader":
		fmt.Print("this is not a CGI header\nand there is no blank line\n")
	case "status":
		fmt.Print("Status: teapot\r\nContent-Type: text/plain\r\n\r\nbad status\n")
	case "empty":
	case "truncated":
		fmt.Print("Content-Type: text/plain\r\nX-Never: ending")
	default:
		fmt.Printf("Content-Type: text/plain\r\n\r\nunknown kind %q\n", kind)
	}
}
