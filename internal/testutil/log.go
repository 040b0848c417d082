package testutil

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// LogBuffer collects log lines for a test to check. It is safe for concurrent use: the
// code under test logs from its goroutines while the test reads.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many times substr was logged so far.
func (l *LogBuffer) Count(substr string) int { return strings.Count(l.String(), substr) }

// Logger returns a text logger at debug level that writes to l.
func (l *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// NewLog returns a debug logger and the buffer it writes to; the test shows what was
// logged when it fails or runs with -v.
func NewLog(t testing.TB) (*slog.Logger, *LogBuffer) {
	return NewLogAt(t, slog.LevelDebug)
}

// NewLogAt is NewLog with a logger that keeps only the lines at level or above: for a test
// that counts the lines a level logs.
func NewLogAt(t testing.TB, level slog.Level) (*slog.Logger, *LogBuffer) {
	lb := &LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("log:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: level})), lb
}
