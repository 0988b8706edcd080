// Command gonmsg-interop is the interoperability peer for the Python NMSG codec: it reads and writes
// NMSG files with farsightsec's go-nmsg, an independent implementation, so the tests can show that
// files written by one side decode on the other.
//
//	gonmsg-interop read FILE                     one JSON object per payload on stdout
//	gonmsg-interop write [-z] [-m SIZE] OUT      JSON lines on stdin (same fields) -> NMSG file
//
// JSON fields: vid, msgtype, time_sec, time_nsec, payload (base64 of NmsgPayload.payload), raw
// (base64 of the whole serialized NmsgPayload, read mode only), crc_error (read mode only).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	nmsg "github.com/farsightsec/go-nmsg"
	"google.golang.org/protobuf/proto"
)

type record struct {
	Vid      uint32 `json:"vid"`
	Msgtype  uint32 `json:"msgtype"`
	TimeSec  int64  `json:"time_sec"`
	TimeNsec uint32 `json:"time_nsec"`
	Payload  []byte `json:"payload"`
	Raw      []byte `json:"raw,omitempty"`
	CrcError bool   `json:"crc_error,omitempty"`
}

func readFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	in := nmsg.NewInput(f, 2*nmsg.MaxContainerSize)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for {
		p, err := in.Recv()
		crcError := false
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			// A payload whose CRC does not match is returned together with a data error.
			if p == nil || !nmsg.IsDataError(err) {
				return err
			}
			crcError = true
		}
		raw, err := proto.Marshal(p)
		if err != nil {
			return err
		}
		rec := record{
			Vid: p.GetVid(), Msgtype: p.GetMsgtype(), TimeSec: p.GetTimeSec(), TimeNsec: p.GetTimeNsec(),
			Payload: p.GetPayload(), Raw: raw, CrcError: crcError,
		}
		if err := enc.Encode(&rec); err != nil {
			return err
		}
	}
}

func writeFile(args []string) error {
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	compress := fs.Bool("z", false, "zlib-compress containers")
	size := fs.Int("m", nmsg.MaxContainerSize, "container size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: write [-z] [-m SIZE] OUT")
	}
	f, err := os.Create(fs.Arg(0))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	o := nmsg.BufferedOutput(w)
	o.SetMaxSize(*size, 0)
	o.SetCompression(*compress)
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	for {
		var rec record
		if err := dec.Decode(&rec); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
		p := &nmsg.NmsgPayload{
			Vid: proto.Uint32(rec.Vid), Msgtype: proto.Uint32(rec.Msgtype),
			TimeSec: proto.Int64(rec.TimeSec), TimeNsec: proto.Uint32(rec.TimeNsec), Payload: rec.Payload,
		}
		if err := o.Send(p); err != nil {
			return err
		}
	}
	if err := o.Close(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "read":
		err = readFile(os.Args[2])
	case len(os.Args) >= 3 && os.Args[1] == "write":
		err = writeFile(os.Args[2:])
	default:
		err = errors.New("usage: gonmsg-interop read FILE | write [-z] [-m SIZE] OUT")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gonmsg-interop:", err)
		os.Exit(1)
	}
}
