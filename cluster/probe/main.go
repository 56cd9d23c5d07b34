// kindling-probe: the real node's test workload, a static binary in an image of its own.
//
// The node's tests need a container that serves HTTP (a Service answering through
// kube-proxy), resolves names (cluster DNS), writes a log line (`kubectl logs`) and can be
// exec'd (`kubectl exec`); the runtime image is a large Python image, and no image can be
// pulled from outside, so this one is built here with the other Go tools.
//
//	kindling-probe serve         HTTP on $PORT (default 8080): / answers the pod's name,
//	                             /resolve?name=N answers N's addresses or 502 and the error
//	kindling-probe echo ARGS...  prints ARGS (what `kubectl exec` runs)
//	kindling-probe get URL       GETs URL and prints the status and body
//	kindling-probe cat FILE      prints FILE (the image has no shell and no coreutils)
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kindling-probe serve | echo ARGS... | get URL | cat FILE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve()
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	case "get":
		os.Exit(get(os.Args[2]))
	case "cat":
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(data)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func serve() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	name, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, name)
	})
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, r.URL.Query().Get("name"))
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, strings.Join(addrs, " "))
	})
	server := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Close()
	}()
	fmt.Printf("kindling-probe serving on :%s as %s\n", port, name)
	if err := server.ListenAndServe(); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func get(url string) int {
	client := &http.Client{Timeout: 10 * time.Second}
	response, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	fmt.Printf("%d %s", response.StatusCode, body)
	return 0
}
