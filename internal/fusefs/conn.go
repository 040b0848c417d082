package fusefs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel's INIT request of a mount, kept by Conn for Restore: the FUSE header and
// fuse_init_in, in the machine's byte order, as /dev/fuse carries them.

const (
	opInit       = 26 // FUSE_INIT
	notifyResend = 7  // FUSE_NOTIFY_RESEND: requeue the requests read but not answered
)

var initSize = binary.Size(fuse.InitIn{})

func encodeInit(in *fuse.InitIn) []byte {
	c := *in
	c.Length = uint32(initSize)
	c.Opcode = opInit
	var b bytes.Buffer
	binary.Write(&b, binary.NativeEndian, &c)
	return b.Bytes()
}

// decodeInit checks a kept INIT request.
func decodeInit(b []byte) (*fuse.InitIn, error) {
	var in fuse.InitIn
	if len(b) != initSize {
		return nil, fmt.Errorf("INIT request of %d bytes, want %d", len(b), initSize)
	}
	if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &in); err != nil {
		return nil, err
	}
	if in.Opcode != opInit || in.Length != uint32(initSize) || in.Major != 7 {
		return nil, fmt.Errorf("not a FUSE 7.x INIT request (opcode %d, length %d, major %d)", in.Opcode, in.Length, in.Major)
	}
	return &in, nil
}

// notifyResendTo asks the kernel to queue again the requests of the connection that were
// read and not answered: those the dead process had taken.
func notifyResendTo(dev *os.File) error {
	var b bytes.Buffer
	// A notification is a reply with unique 0 and the notification's code in place of the
	// error.
	binary.Write(&b, binary.NativeEndian, fuse.OutHeader{Length: 16, Status: notifyResend})
	_, err := dev.Write(b.Bytes())
	return err
}
