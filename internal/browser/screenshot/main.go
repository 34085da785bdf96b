// Command screenshot loads a page in headless Chromium and saves a PNG of
// it, once a JavaScript condition holds: how the README's picture of the
// dashboard is taken (scripts/dashboard-screenshot.sh).
//
//	go run ./internal/browser/screenshot -url http://127.0.0.1:8080/ -out docs/dashboard.png
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/browser"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/", "the page")
	out := flag.String("out", "dashboard.png", "the PNG to write")
	wait := flag.String("wait", "window.freewayDashboard && freewayDashboard.rendered > 0", "a JavaScript condition to wait for before the shot")
	width := flag.Int("width", 1400, "viewport width, CSS pixels")
	height := flag.Int("height", 1000, "viewport height, CSS pixels")
	full := flag.Bool("full", false, "the whole page, not the viewport")
	timeout := flag.Duration("timeout", time.Minute, "give up after")
	flag.Parse()
	if err := shoot(*url, *out, *wait, *width, *height, *full, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "screenshot:", err)
		os.Exit(1)
	}
}

func shoot(url, out, wait string, width, height int, full bool, timeout time.Duration) error {
	path, err := browser.Find()
	if err != nil {
		return err
	}
	c, err := browser.Start(path)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }() // best effort: the PNG is written by then
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	p, err := c.NewPage(ctx, width, height)
	if err != nil {
		return err
	}
	if err := p.Navigate(ctx, url); err != nil {
		return err
	}
	if err := p.Wait(ctx, wait); err != nil {
		return fmt.Errorf("%w; the page logged:\n%s", err, strings.Join(p.Logs(), "\n"))
	}
	time.Sleep(300 * time.Millisecond) // let the charts paint
	saved, err := p.SaveScreenshot(ctx, filepath.Dir(out), filepath.Base(out), full)
	if err != nil {
		return err
	}
	fmt.Println(saved)
	return nil
}
