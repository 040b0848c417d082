// Command pause is the sandbox ("pause") container of the CRI tests: what Kubernetes' pause
// image does, built here because the tests have no internet to pull that image from.
//
// It sleeps until SIGINT or SIGTERM and, as PID 1 of a pod that shares its PID namespace,
// reaps the zombies that the pod's other processes leave to it. Build it static
// (CGO_ENABLED=0) so that its image needs nothing else.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Signals coalesce: one SIGCHLD may stand for several exits.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
