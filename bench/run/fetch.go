package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

// fetch writes the body of a GET to path.
func fetch(u, path string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }() // read to the end below, or the status is the error
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", u, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close() // the copy error is the one reported
		return err
	}
	return f.Close()
}
