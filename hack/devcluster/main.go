// Command devcluster starts and stops the local cluster of package
// e2e/cluster for development and the demo: etcd, kube-apiserver,
// kube-controller-manager and kubectl from bin/, the distribution registry
// with htpasswd auth and TLS, the node simulator, and the imagepin manager
// with its webhook registered.
//
//	devcluster up [--detach] [--dir DIR]   start; print the kubeconfig's path
//	devcluster down [--dir DIR]            stop a detached cluster
//	devcluster registry down|up [--dir DIR]  stop or restart its registry (an outage)
//
// In the foreground `up` runs until interrupted and then stops every process
// it started. With --detach it starts itself in its own session, waits until
// the cluster is up, prints how to use it and returns; `down` stops it and,
// should anything survive, kills the whole session.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imagepin/imagepin/e2e/cluster"
)

const usage = `usage:
  devcluster up [--detach] [--dir DIR] [--registry-addr ADDR] [--manager BIN] [-- MANAGER FLAGS...]
  devcluster down [--dir DIR]
  devcluster registry down|up [--dir DIR]`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "registry":
		err = registryCmd(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func pidFile(dir string) string { return filepath.Join(dir, "devcluster.pid") }

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	dir := fs.String("dir", "tmp/dev-cluster", "directory for the kubeconfig, logs, certificates and registry data")
	registryAddr := fs.String("registry-addr", "127.0.0.1:5055", "address the registry listens on")
	manager := fs.String("manager", "bin/imagepin", "the imagepin binary to run; empty builds one")
	detach := fs.Bool("detach", false, "start in the background and return once the cluster is up")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if pid, ok := running(*dir); ok {
		return fmt.Errorf("a dev cluster already runs from %s (pid %d); stop it with `make dev-cluster-down`", *dir, pid)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	envFile := filepath.Join(*dir, "env")
	_ = os.Remove(envFile)
	if *detach {
		return startDetached(*dir, envFile, args)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// Registry outages are asked for with SIGUSR1/2 (registryCmd); caught
	// from the start, so that one sent while the cluster starts does not
	// kill this process and orphan what it started.
	outages := make(chan os.Signal, 1)
	signal.Notify(outages, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(outages)
	if err := os.WriteFile(pidFile(*dir), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return err
	}
	defer func() { _ = os.Remove(pidFile(*dir)) }()

	c, err := cluster.Start(ctx, cluster.Options{
		Dir:          *dir,
		RegistryAddr: *registryAddr,
		Manager:      *manager,
		ManagerArgs:  fs.Args(),
		Log:          os.Stdout,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("stopping the dev cluster")
		c.Stop()
		fmt.Println("stopped every process it started")
	}()
	fmt.Printf(`dev cluster up:
  kube-apiserver  %s
  registry        https://%s (user %s; CA %s)
  nodes           node-a node-b node-c (simulated)
  imagepin        metrics %s, log %s
  receiver        %s/hooks/distribution (the registry notifies it of every push)

  KUBECONFIG=%s
  source %s   # exports KUBECONFIG, REGISTRY, DOCKER_CONFIG, REGISTRY_CA
`, c.Env.Config.Host, c.Registry.Host, c.Registry.User, c.Registry.CAFile, c.Manager.MetricsURL, c.Manager.LogFile,
		c.Receiver, c.Kubeconfig, envFile)
	serveRegistrySignals(ctx, c, *dir, outages)
	return nil
}

// Outages on request: SIGUSR1 stops the registry, SIGUSR2 starts it again;
// DIR/registry.state says which happened last.
func serveRegistrySignals(ctx context.Context, c *cluster.Cluster, dir string, sig <-chan os.Signal) {
	state := filepath.Join(dir, "registry.state")
	_ = os.WriteFile(state, []byte("up"), 0o600)
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			var err error
			now := "down"
			if s == syscall.SIGUSR1 {
				err = c.Registry.Down()
			} else {
				now, err = "up", c.Registry.Up()
			}
			if err != nil {
				fmt.Println("registry:", err)
				now = "error: " + err.Error()
			}
			fmt.Println("registry is", now)
			_ = os.WriteFile(state, []byte(now), 0o600)
		}
	}
}

// registryCmd asks the running dev cluster to stop or restart its registry
// and waits until it has.
func registryCmd(args []string) error {
	if len(args) == 0 || (args[0] != "down" && args[0] != "up") {
		return errors.New("usage: devcluster registry down|up [--dir DIR]")
	}
	want := args[0]
	fs := flag.NewFlagSet("registry", flag.ExitOnError)
	dir := fs.String("dir", "tmp/dev-cluster", "directory the dev cluster was started with")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	pid, ok := running(*dir)
	if !ok {
		return fmt.Errorf("no dev cluster runs from %s", *dir)
	}
	state := filepath.Join(*dir, "registry.state")
	_ = os.WriteFile(state, []byte("requested"), 0o600)
	sig := syscall.SIGUSR2
	if want == "down" {
		sig = syscall.SIGUSR1
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return err
	}
	for range 600 {
		b, _ := os.ReadFile(state)
		switch got := string(b); {
		case got == want:
			return nil
		case strings.HasPrefix(got, "error: "):
			return errors.New(strings.TrimPrefix(got, "error: "))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the registry did not go %s within 60s", want)
}

// startDetached runs `devcluster up` again without --detach in a session of
// its own, its output in DIR/devcluster.log, and waits for DIR/env.
func startDetached(dir, envFile string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var rest []string
	for _, a := range args {
		if a != "--detach" && a != "-detach" {
			rest = append(rest, a)
		}
	}
	logPath := filepath.Join(dir, "devcluster.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	cmd := exec.Command(self, append([]string{"up"}, rest...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(5 * time.Minute)
	for {
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("the dev cluster did not start (%w):\n%s", err, out)
		case <-deadline:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			return fmt.Errorf("the dev cluster did not start within 5 minutes; see %s", logPath)
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := os.Stat(envFile); err == nil {
			out, _ := os.ReadFile(logPath)
			if i := strings.Index(string(out), "dev cluster up:"); i >= 0 {
				fmt.Print(string(out[i:]))
			}
			fmt.Printf("  (pid %d, log %s; stop it with `make dev-cluster-down`)\n", cmd.Process.Pid, logPath)
			return nil
		}
	}
}

// running reports the pid of the dev cluster that runs from dir, if any.
func running(dir string) (int, bool) {
	b, err := os.ReadFile(pidFile(dir))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, alive(pid) && isDevcluster(pid)
}

// isDevcluster reports whether pid runs `devcluster up`: a pid file that
// survived a reboot or a SIGKILL may name an unrelated process by now.
func isDevcluster(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return len(args) >= 2 && filepath.Base(args[0]) == "devcluster" && args[1] == "up"
}

// sessionMembers lists the processes of session sid (from /proc), but sid.
// envtest starts etcd and kube-apiserver in process groups of their own,
// so killing the session leader's group would miss them.
func sessionMembers(sid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == sid {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces), from ")":
		// state ppid pgrp session ...
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 3 && f[3] == strconv.Itoa(sid) {
			out = append(out, pid)
		}
	}
	return out
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	dir := fs.String("dir", "tmp/dev-cluster", "directory the dev cluster was started with")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pid, ok := running(*dir)
	if !ok {
		_ = os.Remove(pidFile(*dir))
		fmt.Printf("no dev cluster runs from %s\n", *dir)
		return nil
	}
	fmt.Printf("stopping the dev cluster (pid %d)\n", pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for i := 0; i < 600 && alive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	// Whatever is left in its session (it is the session's leader, and
	// etcd and kube-apiserver run in process groups of their own) goes.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for _, p := range sessionMembers(pid) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	_ = os.Remove(pidFile(*dir))
	fmt.Println("stopped")
	return nil
}
