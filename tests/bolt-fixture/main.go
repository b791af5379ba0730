// bolt-fixture writes real BoltDB files with the real go.etcd.io/bbolt
// library, for Ferry's Bolt reader and tailer tests and benchmarks.
//
// Build offline in GOPATH mode with Debian's golang-go and
// golang-github-coreos-bbolt-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off go build -o bolt-fixture .
//
// Modes (each prints one line of JSON on stdout when it is done):
//
//	cells DIR                 Cells-like service files (docstore, activities,
//	                          chat, mailer queue, versions, jobs,
//	                          configs-versions) in DIR, each with a .dump.
//	shapes FILE               a small file with nested, inline and non-inline
//	                          buckets and values over a page; FILE.dump.
//	random FILE -keys N       random transactions (puts, overwrites, deletes,
//	                          nested bucket creates and deletes, values over a
//	                          page) until N keys were put; then FILE.dump.
//	big FILE -mb N            a file of about N MiB in large transactions.
//	smalltx FILE -txs N       N small transactions (one overwrite each of keys
//	                          0..-keys of bucket-0) on a `big` file.
//	iterate FILE              reads every key with bbolt (cursor walk,
//	                          nested buckets included) and prints the time.
//	dump FILE                 writes FILE.dump.
//	cells-home DIR            a Cells v4 home's Bolt files in their places
//	                          (DIR/services/<service>/<file>.db), no dumps;
//	                          DIR.versions.json lists the ChangeLogs written.
//	cells-bad DIR             adds to a Cells home one entry of each kind
//	                          Cells itself cannot read: a versions value that
//	                          is no ChangeLog, an activity that is not JSON,
//	                          a chat room of an unknown type.
//	cells-live DIR -for D     keeps the Cells home's Bolt files open (their
//	                          locks held, as a running Cells does) and
//	                          commits changes in the services' own shapes
//	                          for D or until SIGTERM/SIGINT; then closes
//	                          them (locks released) and reports counts.
//
// Dump format, one entry per line, sorted, bytes in lowercase hex, bucket
// path segments joined with ',' ("-" for the top level):
//
//	B <path> <name>            a bucket
//	V <path> <key> <value>     a key
package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: bolt-fixture cells|shapes|random|big|smalltx|iterate|dump PATH [flags]")
		os.Exit(2)
	}
	mode, path := os.Args[1], os.Args[2]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	keys := fs.Int("keys", 100000, "random: keys to put in total")
	seed := fs.Int64("seed", 1, "random seed")
	maxOps := fs.Int("max-ops", 40, "random: most operations in one transaction")
	pause := fs.Duration("pause", 0, "random: pause between transactions")
	noSync := fs.Bool("nosync", false, "skip fsync on commit")
	mb := fs.Int("mb", 64, "big: target size in MiB")
	txs := fs.Int("txs", 1000, "smalltx: transactions")
	startFile := fs.String("started", "", "random: create this file once the first transaction committed")
	forDur := fs.Duration("for", time.Minute, "cells-live: how long to keep writing")
	if err := fs.Parse(os.Args[3:]); err != nil {
		os.Exit(2)
	}
	var err error
	switch mode {
	case "cells":
		err = cells(path)
	case "shapes":
		err = shapes(path)
	case "random":
		err = random(path, *keys, *seed, *maxOps, *pause, *noSync, *startFile)
	case "big":
		err = big(path, *mb, *seed)
	case "smalltx":
		err = smallTx(path, *txs, *seed, *noSync, *keys, *pause)
	case "iterate":
		err = iterate(path)
	case "dump":
		err = dumpFile(path)
	case "cells-home":
		err = cellsHome(path)
	case "cells-live":
		err = cellsLive(path, *forDur, *seed)
	case "cells-bad":
		err = cellsBad(path)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bolt-fixture:", err)
		os.Exit(1)
	}
}

func open(path string, noSync bool) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	db.NoSync = noSync
	return db, nil
}

func report(v map[string]interface{}) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func be8(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

func mustJSON(v interface{}) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ---- dump ----

func dumpFile(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	var lines []string
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			lines = append(lines, "B - "+hex.EncodeToString(name))
			return dumpBucket(b, []string{hex.EncodeToString(name)}, &lines)
		})
	})
	if err != nil {
		return err
	}
	sort.Strings(lines)
	out := strings.Join(lines, "\n")
	if len(lines) > 0 {
		out += "\n"
	}
	if err := os.WriteFile(path+".dump.tmp", []byte(out), 0o600); err != nil {
		return err
	}
	return os.Rename(path+".dump.tmp", path+".dump")
}

func dumpBucket(b *bolt.Bucket, path []string, lines *[]string) error {
	p := strings.Join(path, ",")
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			*lines = append(*lines, "B "+p+" "+hex.EncodeToString(k))
			return dumpBucket(b.Bucket(k), append(append([]string{}, path...), hex.EncodeToString(k)), lines)
		}
		*lines = append(*lines, "V "+p+" "+hex.EncodeToString(k)+" "+hex.EncodeToString(v))
		return nil
	})
}

// ---- iterate (the bench baseline) ----

func iterate(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	start := time.Now()
	var n, bytes uint64
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			n++
			bytes += uint64(len(k) + len(v))
			if v == nil {
				walk(b.Bucket(k))
			}
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		c := tx.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			n++
			bytes += uint64(len(k))
			walk(tx.Bucket(k))
		}
		return nil
	})
	report(map[string]interface{}{"entries": n, "bytes": bytes, "elapsed_ns": time.Since(start).Nanoseconds()})
	return err
}

// ---- shapes: every structure the reader must handle ----

func shapes(path string) error {
	os.Remove(path)
	db, err := open(path, true)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewSource(7))
	err = db.Update(func(tx *bolt.Tx) error {
		// Inline: a few small keys, no sub-buckets.
		small, _ := tx.CreateBucket([]byte("small"))
		for i := 0; i < 3; i++ {
			small.Put([]byte(fmt.Sprintf("k%d", i)), []byte(fmt.Sprintf("v%d", i)))
		}
		// An empty bucket and an empty value.
		tx.CreateBucket([]byte("empty"))
		small.Put([]byte("nil-value"), []byte{})
		// Deep nesting with inline leaves at the bottom.
		b := tx.Bucket([]byte("small"))
		parent, _ := tx.CreateBucket([]byte("nested"))
		for d := 0; d < 5; d++ {
			parent, _ = parent.CreateBucket([]byte(fmt.Sprintf("level-%d", d)))
			parent.Put([]byte("here"), be8(uint64(d)))
		}
		_ = b
		// Many keys: a branch page over several leaves.
		many, _ := tx.CreateBucket([]byte("many"))
		for i := 0; i < 5000; i++ {
			many.Put(be8(uint64(i)), []byte(fmt.Sprintf("value-%d-%s", i, strings.Repeat("x", i%50))))
		}
		// Values over a page (overflow pages).
		bigb, _ := tx.CreateBucket([]byte("big"))
		for i := 0; i < 5; i++ {
			v := make([]byte, 4096*(i+1)+r.Intn(1000))
			r.Read(v)
			bigb.Put([]byte(fmt.Sprintf("blob-%d", i)), v)
		}
		// Binary keys with zero bytes in bucket names and keys.
		bin, _ := tx.CreateBucket([]byte{0, 1, 0, 2})
		bin.Put([]byte{0, 0, 1}, []byte{0})
		return nil
	})
	if err != nil {
		return err
	}
	// A second transaction so both metas are in use.
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("many")).Delete(be8(3)) })
	db.Close()
	return finish(path)
}

func finish(path string) error {
	if err := dumpFile(path); err != nil {
		return err
	}
	st, _ := os.Stat(path)
	report(map[string]interface{}{"path": path, "bytes": st.Size()})
	return nil
}

// ---- Cells-like service files (reference cells-stores.md 1b) ----

func cells(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewSource(42))
	users := []string{"admin", "alice", "bob", "carol"}
	files := map[string]func(tx *bolt.Tx) error{
		"docstore.db": func(tx *bolt.Tx) error {
			for _, store := range []string{"share", "user-prefs", "meta"} {
				b, _ := tx.CreateBucket([]byte("store-" + store))
				for i := 0; i < 40; i++ {
					id := fmt.Sprintf("%s-doc-%03d", store, i)
					data := mustJSON(map[string]interface{}{"Path": "/personal/" + id, "Size": r.Intn(1 << 20)})
					b.Put([]byte(id), mustJSON(map[string]interface{}{
						"ID": id, "Type": 1, "Owner": users[i%len(users)], "Data": string(data),
						"IndexableMeta": string(mustJSON(map[string]string{"owner": users[i%len(users)]})),
					}))
				}
			}
			return nil
		},
		"activities.db": func(tx *bolt.Tx) error {
			for _, ot := range []string{"USER", "NODE"} {
				top, _ := tx.CreateBucket([]byte(ot))
				for _, u := range users {
					var inboxLen uint64
					owner, _ := top.CreateBucket([]byte(u))
					for _, box := range []string{"inbox", "outbox"} {
						bx, _ := owner.CreateBucket([]byte(box))
						// Every box numbers from 1: the same sequences in every box.
						for j := 0; j < 5+r.Intn(30); j++ {
							seq, _ := bx.NextSequence()
							if box == "inbox" {
								inboxLen = seq
							}
							bx.Put(be8(seq), activityJSON(seq, u, int64(1714557600+int(seq)*60+r.Intn(60)), int32(r.Intn(1000)*1000)))
						}
					}
					subs, _ := owner.CreateBucket([]byte("subscriptions"))
					subs.Put([]byte("bob"), mustJSON([]string{"read", "change"}))
					for _, box := range []string{"lastread", "lastsent"} {
						bx, _ := owner.CreateBucket([]byte(box))
						bx.Put([]byte("last"), be8(uint64(1+r.Intn(int(inboxLen)))))
					}
				}
			}
			return nil
		},
		"chat.db": func(tx *bolt.Tx) error {
			tx.CreateBucket([]byte("rooms"))
			msgs, _ := tx.CreateBucket([]byte("messages"))
			// chat.RoomType: GLOBAL 0 (omitted from JSON), WORKSPACE 1, USER 2, NODE 3.
			roomTypes := map[string]int{"GLOBAL": 0, "WORKSPACE": 1, "USER": 2, "NODE": 3}
			for _, rt := range []string{"GLOBAL", "WORKSPACE", "NODE", "USER"} {
				t, _ := msgs.CreateBucket([]byte(rt))
				for o := 0; o < 2; o++ {
					obj, _ := t.CreateBucket([]byte(fmt.Sprintf("%s-object-%d", strings.ToLower(rt), o)))
					room := fmt.Sprintf("room-%s-%d", strings.ToLower(rt), o)
					v := map[string]interface{}{"Uuid": room, "RoomTypeObject": fmt.Sprintf("%s-object-%d", strings.ToLower(rt), o), "Users": users[:2]}
					if n := roomTypes[rt]; n != 0 {
						v["Type"] = n
					}
					obj.Put([]byte(room), mustJSON(v))
					m, _ := msgs.CreateBucket([]byte(room))
					for j := 0; j < 20; j++ {
						seq, _ := m.NextSequence()
						m.Put(be8(seq), mustJSON(map[string]interface{}{"Uuid": fmt.Sprintf("msg-%s-%d", room, seq), "RoomUuid": room, "Author": users[j%4], "Message": "hello", "Timestamp": 1714557600 + j}))
					}
				}
			}
			return nil
		},
		"queue.db": func(tx *bolt.Tx) error {
			b, _ := tx.CreateBucket([]byte("MailerQueue"))
			for j := 0; j < 25; j++ {
				seq, _ := b.NextSequence()
				b.Put(be8(seq), mustJSON(map[string]interface{}{"To": []map[string]string{{"Address": "bob@example.com"}}, "Subject": fmt.Sprintf("notice %d", j), "ContentPlain": strings.Repeat("body ", 40)}))
			}
			return nil
		},
		"versions.db": func(tx *bolt.Tx) error {
			v, _ := tx.CreateBucket([]byte("versions"))
			for n := 0; n < 12; n++ {
				node, _ := v.CreateBucket([]byte(fmt.Sprintf("node-uuid-%04d", n)))
				for j := 0; j < 1+r.Intn(6); j++ {
					seq, _ := node.NextSequence()
					cl := changeLog{
						Uuid:        fmt.Sprintf("version-%d-%d", n, seq),
						Description: "Updated",
						MTime:       int64(1714557600 + n*3600 + int(seq)*60),
						Size:        int64(100 + r.Intn(1<<20)),
						Data:        []byte(fmt.Sprintf("blob-%d-%d", n, seq)),
						OwnerUuid:   users[n%len(users)],
						EventType:   3, // UPDATE_CONTENT
						NodeUuid:    fmt.Sprintf("node-uuid-%04d", n),
						NodePath:    fmt.Sprintf("pydiods1/folder/file-%04d.txt", n),
						Node:        fmt.Sprintf("node-uuid-%04d", n),
						Seq:         seq,
					}
					writtenVersions = append(writtenVersions, cl)
					node.Put(be8(seq), cl.marshal())
				}
			}
			return nil
		},
		"jobs.db": func(tx *bolt.Tx) error {
			jobs, _ := tx.CreateBucket([]byte("jobs"))
			for j := 0; j < 15; j++ {
				id := fmt.Sprintf("job-%02d", j)
				jobs.Put([]byte(id), mustJSON(map[string]interface{}{"ID": id, "Label": "Job " + id, "Owner": "pydio.system.user", "Schedule": map[string]string{"Iso8601Schedule": "R/2012-06-04T19:25:16.828696-07:00/PT10M"}}))
				tasks, _ := tx.CreateBucket([]byte("tasks-" + id))
				for t := 0; t < r.Intn(8); t++ {
					tid := fmt.Sprintf("%s-task-%d", id, t)
					tasks.Put([]byte(tid), mustJSON(map[string]interface{}{"ID": tid, "JobID": id, "Status": 3, "StartTime": 1714557600 + t}))
				}
			}
			return nil
		},
		"configs-versions.db": func(tx *bolt.Tx) error {
			b, _ := tx.CreateBucket([]byte("versions"))
			for j := 0; j < 8; j++ {
				seq, _ := b.NextSequence()
				cfg := map[string]interface{}{"version": j, "frontend": map[string]string{"url": "https://cells.example.com"}, "padding": strings.Repeat("p", 3000*j)}
				b.Put(be8(seq), mustJSON(map[string]interface{}{"Id": seq, "Date": "2024-05-01T10:00:00Z", "User": "admin", "Log": "save", "Data": cfg}))
			}
			return nil
		},
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		os.Remove(p)
		db, err := open(p, true)
		if err != nil {
			return err
		}
		if err := db.Update(files[n]); err != nil {
			return err
		}
		db.Close()
		if err := dumpFile(p); err != nil {
			return err
		}
	}
	report(map[string]interface{}{"dir": dir, "files": names})
	return nil
}

// ---- random transactions ----

type state struct {
	r       *rand.Rand
	buckets [][][]byte // paths of every bucket, top-level included
	nextKey int
}

func (s *state) bucket(tx *bolt.Tx, path [][]byte) *bolt.Bucket {
	b := tx.Bucket(path[0])
	for _, p := range path[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket(p)
	}
	return b
}

func (s *state) value() []byte {
	n := 1 + s.r.Intn(120)
	if s.r.Intn(100) == 0 {
		n = 4096 + s.r.Intn(12000) // over a page
	}
	v := make([]byte, n)
	s.r.Read(v)
	return v
}

func random(path string, keys int, seed int64, maxOps int, pause time.Duration, noSync bool, started string) error {
	db, err := open(path, noSync)
	if err != nil {
		return err
	}
	s := &state{r: rand.New(rand.NewSource(seed))}
	err = db.Update(func(tx *bolt.Tx) error {
		for i := 0; i < 4; i++ {
			name := []byte(fmt.Sprintf("top-%d", i))
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
			s.buckets = append(s.buckets, [][]byte{name})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if started != "" {
		os.WriteFile(started, []byte("1"), 0o600)
	}
	puts, txs := 0, 0
	for puts < keys {
		err := db.Update(func(tx *bolt.Tx) error {
			ops := 1 + s.r.Intn(maxOps)
			for i := 0; i < ops && puts < keys; i++ {
				path := s.buckets[s.r.Intn(len(s.buckets))]
				b := s.bucket(tx, path)
				if b == nil {
					continue
				}
				switch x := s.r.Intn(100); {
				case x < 60: // new key
					s.nextKey++
					if err := b.Put([]byte(fmt.Sprintf("key-%08d", s.nextKey)), s.value()); err != nil {
						return err
					}
					puts++
				case x < 80: // overwrite or delete an existing key
					k, v := b.Cursor().Seek([]byte(fmt.Sprintf("key-%08d", s.r.Intn(s.nextKey+1))))
					if k == nil || v == nil {
						continue
					}
					k = append([]byte{}, k...)
					if x < 72 {
						if err := b.Put(k, s.value()); err != nil {
							return err
						}
						puts++
					} else if err := b.Delete(k); err != nil {
						return err
					}
				case x < 88: // nested bucket create
					if len(path) >= 4 {
						continue
					}
					name := []byte(fmt.Sprintf("nested-%d", s.r.Intn(1000000)))
					if b.Bucket(name) != nil || b.Get(name) != nil {
						continue
					}
					if _, err := b.CreateBucket(name); err != nil {
						return err
					}
					s.buckets = append(s.buckets, append(append([][]byte{}, path...), name))
				case x < 91: // nested bucket delete (with its contents)
					if len(path) < 2 {
						continue
					}
					parent := s.bucket(tx, path[:len(path)-1])
					if err := parent.DeleteBucket(path[len(path)-1]); err != nil {
						return err
					}
					s.forget(path)
				default: // a few keys in a row (grows leaves, splits pages)
					for j := 0; j < 5; j++ {
						s.nextKey++
						if err := b.Put([]byte(fmt.Sprintf("key-%08d", s.nextKey)), s.value()); err != nil {
							return err
						}
						puts++
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		txs++
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	var txid int
	db.View(func(tx *bolt.Tx) error { txid = tx.ID(); return nil })
	db.Close()
	if err := dumpFile(path); err != nil {
		return err
	}
	report(map[string]interface{}{"path": path, "puts": puts, "txs": txs, "txid": txid})
	return nil
}

// forget drops path and every bucket under it.
func (s *state) forget(path [][]byte) {
	keep := s.buckets[:0]
	for _, b := range s.buckets {
		if len(b) >= len(path) && equalPath(b[:len(path)], path) {
			continue
		}
		keep = append(keep, b)
	}
	s.buckets = keep
}

func equalPath(a, b [][]byte) bool {
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

// ---- big files for the benchmark ----

func big(path string, mb int, seed int64) error {
	os.Remove(path)
	db, err := open(path, true)
	if err != nil {
		return err
	}
	defer db.Close()
	r := rand.New(rand.NewSource(seed))
	target := int64(mb) << 20
	n := 0
	for {
		st, _ := os.Stat(path)
		if st.Size() >= target {
			break
		}
		err := db.Update(func(tx *bolt.Tx) error {
			top, err := tx.CreateBucketIfNotExists([]byte(fmt.Sprintf("bucket-%d", n/2000000)))
			if err != nil {
				return err
			}
			for i := 0; i < 50000; i++ {
				v := make([]byte, 50+r.Intn(150))
				r.Read(v)
				if err := top.Put([]byte(fmt.Sprintf("key-%012d", n)), v); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	st, _ := os.Stat(path)
	report(map[string]interface{}{"path": path, "keys": n, "bytes": st.Size()})
	return nil
}

func smallTx(path string, txs int, seed int64, noSync bool, keys int, pause time.Duration) error {
	db, err := open(path, noSync)
	if err != nil {
		return err
	}
	defer db.Close()
	r := rand.New(rand.NewSource(seed))
	start := time.Now()
	for i := 0; i < txs; i++ {
		err := db.Update(func(tx *bolt.Tx) error {
			v := make([]byte, 100)
			r.Read(v)
			return tx.Bucket([]byte("bucket-0")).Put([]byte(fmt.Sprintf("key-%012d", r.Intn(keys))), v)
		})
		if err != nil {
			return err
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	report(map[string]interface{}{"txs": txs, "elapsed_ns": time.Since(start).Nanoseconds()})
	return nil
}

// ---- a Cells home ----

// cellsServices maps each Bolt file of cells() to its service directory.
var cellsServices = map[string]string{
	"docstore.db":   "pydio.grpc.docstore",
	"activities.db": "pydio.grpc.activity",
	"chat.db":       "pydio.grpc.chat",
	"queue.db":      "pydio.grpc.mailer",
	"versions.db":   "pydio.grpc.versions",
	"jobs.db":       "pydio.grpc.jobs",
}

// activityJSON is an activity.Object as Cells' jsonx (jsoniter, standard
// library compatible) writes it in Bolt: lower-camel keys, enums as numbers,
// Timestamps as {"seconds","nanos"}, zero values omitted.
func activityJSON(seq uint64, user string, secs int64, nanos int32) []byte {
	updated := map[string]interface{}{"seconds": secs}
	if nanos != 0 {
		updated["nanos"] = nanos
	}
	return mustJSON(map[string]interface{}{
		"jsonLdContext": "https://www.w3.org/ns/activitystreams",
		"type":          3, // Update
		"id":            fmt.Sprintf("/activity-%d", seq),
		"actor":         map[string]interface{}{"type": 23, "id": user, "name": user},
		"object":        map[string]interface{}{"type": 19, "id": fmt.Sprintf("node-%d", seq), "name": "file.txt"},
		"updated":       updated,
	})
}

// changeLog is the part of a tree.ChangeLog the fixture sets, with where it
// goes; marshal writes it as proto.Marshal does (field numbers of Cells'
// tree proto: ChangeLog 1 Uuid, 2 Description, 3 MTime, 4 Size, 5 Data,
// 6 OwnerUuid, 7 Event, 8 Location; NodeChangeEvent 1 Type, 3 Target;
// Node 1 Uuid, 2 Path, 3 Type, 4 Size, 5 MTime, 8 MetaStore).
type changeLog struct {
	Uuid, Description, OwnerUuid string
	MTime, Size                  int64
	Data                         []byte
	EventType                    int32
	NodeUuid, NodePath           string
	Node                         string
	Seq                          uint64
}

func (c changeLog) node() []byte {
	var n []byte
	n = protowire.AppendTag(n, 1, protowire.BytesType)
	n = protowire.AppendString(n, c.NodeUuid)
	n = protowire.AppendTag(n, 2, protowire.BytesType)
	n = protowire.AppendString(n, c.NodePath)
	n = protowire.AppendTag(n, 3, protowire.VarintType)
	n = protowire.AppendVarint(n, 1) // LEAF
	n = protowire.AppendTag(n, 4, protowire.VarintType)
	n = protowire.AppendVarint(n, uint64(c.Size))
	n = protowire.AppendTag(n, 5, protowire.VarintType)
	n = protowire.AppendVarint(n, uint64(c.MTime))
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendString(entry, "name")
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	entry = protowire.AppendString(entry, `"file.txt"`)
	n = protowire.AppendTag(n, 8, protowire.BytesType)
	n = protowire.AppendBytes(n, entry)
	return n
}

func (c changeLog) marshal() []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, c.Uuid)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, c.Description)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(c.MTime))
	b = protowire.AppendTag(b, 4, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(c.Size))
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendBytes(b, c.Data)
	b = protowire.AppendTag(b, 6, protowire.BytesType)
	b = protowire.AppendString(b, c.OwnerUuid)
	var ev []byte
	ev = protowire.AppendTag(ev, 1, protowire.VarintType)
	ev = protowire.AppendVarint(ev, uint64(c.EventType))
	ev = protowire.AppendTag(ev, 3, protowire.BytesType)
	ev = protowire.AppendBytes(ev, c.node())
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	b = protowire.AppendBytes(b, ev)
	b = protowire.AppendTag(b, 8, protowire.BytesType)
	b = protowire.AppendBytes(b, c.node())
	return b
}

// writtenVersions collects the ChangeLogs cells() wrote (cells-home lists them).
var writtenVersions []changeLog

// cellsBad adds entries Cells cannot read to a Cells home (see the usage).
func cellsBad(home string) error {
	put := func(svc, file string, path []string, key, value []byte) error {
		db, err := open(filepath.Join(home, "services", svc, file), true)
		if err != nil {
			return err
		}
		defer db.Close()
		return db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(path[0]))
			if err != nil {
				return err
			}
			for _, p := range path[1:] {
				if b, err = b.CreateBucketIfNotExists([]byte(p)); err != nil {
					return err
				}
			}
			return b.Put(key, value)
		})
	}
	if err := put("pydio.grpc.versions", "versions.db", []string{"versions", "node-uuid-bad"}, be8(1), []byte{0x0a, 100, 'x'}); err != nil {
		return err
	}
	if err := put("pydio.grpc.activity", "activities.db", []string{"USER", "alice", "outbox"}, be8(9999), []byte("{not json")); err != nil {
		return err
	}
	if err := put("pydio.grpc.chat", "chat.db", []string{"messages", "PARTY", "party-object"}, []byte("room-party"), mustJSON(map[string]interface{}{"Uuid": "room-party"})); err != nil {
		return err
	}
	report(map[string]interface{}{"home": home, "bad": 3})
	return nil
}

func cellsHome(home string) error {
	tmp, err := os.MkdirTemp("", "cells-bolt-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// cells() prints its own report; keep stdout to one line.
	stdout := os.Stdout
	os.Stdout, _ = os.Open(os.DevNull)
	err = cells(tmp)
	os.Stdout = stdout
	if err != nil {
		return err
	}
	var files []string
	for file, svc := range cellsServices {
		dir := filepath.Join(home, "services", svc)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(tmp, file), filepath.Join(dir, file)); err != nil {
			return err
		}
		files = append(files, filepath.Join("services", svc, file))
	}
	if err := os.Rename(filepath.Join(tmp, "configs-versions.db"), filepath.Join(home, "configs-versions.db")); err != nil {
		return err
	}
	sort.Strings(files)
	versions, err := json.Marshal(writtenVersions)
	if err != nil {
		return err
	}
	if err := os.WriteFile(strings.TrimRight(home, "/")+".versions.json", versions, 0o644); err != nil {
		return err
	}
	report(map[string]interface{}{"home": home, "files": files})
	return nil
}

// cellsLive changes a Cells home the way its services do while it runs.
func cellsLive(home string, d time.Duration, seed int64) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	dbs := map[string]*bolt.DB{}
	for file, svc := range cellsServices {
		db, err := open(filepath.Join(home, "services", svc, file), false)
		if err != nil {
			return err
		}
		dbs[file] = db
	}
	defer func() {
		for _, db := range dbs {
			db.Close()
		}
	}()
	r := rand.New(rand.NewSource(seed))
	users := []string{"admin", "alice", "bob", "carol"}
	counts := map[string]int{}
	for i := 0; ctx.Err() == nil; i++ {
		var err error
		switch r.Intn(5) {
		case 0: // docstore: a new or changed document, sometimes a delete
			err = dbs["docstore.db"].Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("store-share"))
				id := fmt.Sprintf("share-doc-%03d", r.Intn(80))
				if r.Intn(4) == 0 {
					counts["docstore-deletes"]++
					return b.Delete([]byte(id))
				}
				counts["docstore-puts"]++
				data := mustJSON(map[string]interface{}{"Path": "/personal/" + id, "Size": r.Intn(1 << 20), "Rev": i})
				return b.Put([]byte(id), mustJSON(map[string]interface{}{"ID": id, "Type": 1, "Owner": users[r.Intn(4)], "Data": string(data)}))
			})
		case 1: // activity: a new activity in a user's inbox
			err = dbs["activities.db"].Update(func(tx *bolt.Tx) error {
				bx := tx.Bucket([]byte("USER")).Bucket([]byte(users[r.Intn(4)])).Bucket([]byte("inbox"))
				seq, _ := bx.NextSequence()
				counts["activities"]++
				now := time.Now()
				return bx.Put(be8(seq), activityJSON(seq, "live", now.Unix(), int32(now.Nanosecond())))
			})
		case 2: // chat: a message in a room
			err = dbs["chat.db"].Update(func(tx *bolt.Tx) error {
				room := fmt.Sprintf("room-workspace-%d", r.Intn(2))
				m := tx.Bucket([]byte("messages")).Bucket([]byte(room))
				seq, _ := m.NextSequence()
				counts["messages"]++
				return m.Put(be8(seq), mustJSON(map[string]interface{}{"Uuid": fmt.Sprintf("msg-%s-%d", room, seq), "RoomUuid": room, "Author": users[r.Intn(4)], "Message": "live", "Timestamp": time.Now().Unix()}))
			})
		case 3: // jobs: a task of a job changes status
			err = dbs["jobs.db"].Update(func(tx *bolt.Tx) error {
				id := fmt.Sprintf("job-%02d", r.Intn(15))
				tasks := tx.Bucket([]byte("tasks-" + id))
				tid := fmt.Sprintf("%s-task-live-%d", id, r.Intn(5))
				counts["tasks"]++
				return tasks.Put([]byte(tid), mustJSON(map[string]interface{}{"ID": tid, "JobID": id, "Status": r.Intn(5), "StartTime": time.Now().Unix()}))
			})
		case 4: // mailer: a mail queued, the oldest sent
			err = dbs["queue.db"].Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("MailerQueue"))
				if r.Intn(2) == 0 {
					if k, _ := b.Cursor().First(); k != nil {
						counts["mails-sent"]++
						return b.Delete(k)
					}
				}
				seq, _ := b.NextSequence()
				counts["mails-queued"]++
				return b.Put(be8(seq), mustJSON(map[string]interface{}{"Subject": fmt.Sprintf("live %d", seq)}))
			})
		}
		if err != nil {
			return err
		}
		time.Sleep(time.Duration(5+r.Intn(20)) * time.Millisecond)
	}
	out := map[string]interface{}{"home": home}
	for k, v := range counts {
		out[k] = v
	}
	report(out)
	return nil
}
