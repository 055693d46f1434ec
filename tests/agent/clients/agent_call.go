// A raftsso agent client in plain Go: net/http with a Unix-socket dialer, no module
// beyond the standard library, no raftsso code.
//
//	go run agent_call.go /run/raftsso/agent.sock payroll alice
//
// Prints one line per check ("ok ...") and the ciphertext it made; exits 1 on failure.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
)

var client *http.Client

func call(method, path string, body any) (int, map[string]any) {
	var reader *bytes.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		reader = bytes.NewReader(data)
	} else {
		reader = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, reader)
	if err != nil {
		fail(err.Error())
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		fail(err.Error())
	}
	defer resp.Body.Close()
	var answer map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		fail(err.Error())
	}
	return resp.StatusCode, answer
}

func fail(what string) {
	fmt.Println("FAILED " + what)
	os.Exit(1)
}

func check(ok bool, what string) {
	if !ok {
		fail(what)
	}
	fmt.Println("ok " + what)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func unb64(v any) string {
	s, _ := v.(string)
	data, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		fail("bad base64")
	}
	return string(data)
}

func main() {
	socket, app, user := os.Args[1], os.Args[2], os.Args[3]
	client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	status, health := call("GET", "/v1/health", nil)
	check(status == 200 && health["status"] == "ok", "health")

	plain := "hello from Go é"
	status, enc := call("POST", "/v1/encrypt", map[string]string{
		"app": app, "plaintext": b64(plain), "associated_data": b64("order-42")})
	check(status == 200, "encrypt")
	fmt.Println("ciphertext " + enc["ciphertext"].(string))

	status, dec := call("POST", "/v1/decrypt", map[string]string{
		"app": app, "ciphertext": enc["ciphertext"].(string), "associated_data": b64("order-42")})
	check(status == 200 && unb64(dec["plaintext"]) == plain, "decrypt")

	status, wrong := call("POST", "/v1/decrypt", map[string]string{
		"app": app, "ciphertext": enc["ciphertext"].(string)})
	check(status == 400 && wrong["error"] == "INVALID_TOKEN", "decrypt without the associated data is refused")

	status, cred := call("GET", "/v1/apps/"+app+"/credentials/"+user, nil)
	check(status == 200, "credential get")
	fmt.Println("credential " + unb64(cred["credential"]))
}
