package profile

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Print writes p, the profile of the artifact desc (with the pack of descriptor pack, nil
// for none), as `lazypull profile show` shows it: a head, then the files in first-access
// order, a table.
func Print(w io.Writer, p *Profile, desc v1.Descriptor, pack *v1.Descriptor) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "profile\t%s\n", desc.Digest)
	fmt.Fprintf(tw, "image\t%s\n", p.Subject)
	fmt.Fprintf(tw, "created\t%s\n", p.Created.Format(time.RFC3339))
	if len(p.Command) > 0 {
		fmt.Fprintf(tw, "command\t%q\n", p.Command)
	}
	fmt.Fprintf(tw, "files\t%d, %d bytes\n", len(p.Files), p.Bytes())
	if pack != nil {
		fmt.Fprintf(tw, "pack\t%s, %d bytes\n", pack.Digest, pack.Size)
	} else {
		fmt.Fprintf(tw, "pack\tnone\n")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "AT (ms)\tLAYER\tBYTES\tRANGES\tPATH")
	for _, fl := range p.Files {
		var n int64
		for _, r := range fl.Ranges {
			n += r.Len
		}
		fmt.Fprintf(tw, "%.1f\t%d\t%d\t%d\t%s\n", float64(fl.AtUS)/1000, fl.Layer, n, len(fl.Ranges), printablePath(fl.Path))
	}
	return tw.Flush()
}

// printablePath is how Print prints a path of a profile (which comes from the registry):
// as /PATH, quoted if it holds anything but printable characters, so that no name sends
// the terminal control sequences, nor breaks the table.
func printablePath(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return !unicode.IsPrint(r) || r == '\t' }) {
		return strconv.Quote("/" + p)
	}
	return "/" + p
}
