// Command hello is the smallest CGI program: it answers "hello from a cell".
// Built static (CGO_ENABLED=0), it is also the program the benchmark spawns,
// so it does nothing beyond writing its response.
package main

import "os"

func main() {
	os.Stdout.WriteString("Content-Type: text/plain\r\n\r\nhello from a cell\n")
}
