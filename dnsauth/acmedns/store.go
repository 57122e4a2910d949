package acmedns

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
)

// Errors returned by a Store. Match them with errors.Is.
var (
	ErrNotFound = errors.New("acmedns: not found")
	ErrExists   = errors.New("acmedns: already exists")
)

// Account is one acme-dns registration: the credentials that may update the TXT values of one
// challenge name, <Subdomain>.<zone>.
type Account struct {
	// Username is the account's ID (a random UUID), sent as X-Api-User.
	Username string
	// KeyHash is the SHA-256 of the account's API key (X-Api-Key). The key itself is returned
	// once, by /register, and never stored.
	KeyHash [sha256.Size]byte
	// Subdomain is the account's challenge label (a random UUID): its values are served at
	// <Subdomain>.<zone>.
	Subdomain string
	// AllowFrom limits updates to clients in these networks. Empty: from anywhere.
	AllowFrom []netip.Prefix
	Created   time.Time
}

// CheckKey reports, in constant time, whether key is the account's API key.
func (a Account) CheckKey(key string) bool {
	h := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(h[:], a.KeyHash[:]) == 1
}

// Allowed reports whether a client at addr may update the account.
func (a Account) Allowed(addr netip.Addr) bool {
	if len(a.AllowFrom) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a.AllowFrom {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Store holds accounts and challenge values. *MemStore is the in-process implementation; a
// shared backend lets several DNS replicas serve the same values.
type Store interface {
	// CreateAccount stores a new account; ErrExists if its Username or Subdomain is taken.
	CreateAccount(ctx context.Context, a Account) error
	// Account returns the account with the given username, or ErrNotFound.
	Account(ctx context.Context, username string) (Account, error)
	// AddTXT publishes value at name (lowercase, no trailing dot) until expires, keeping only the
	// store's most recent values per name.
	AddTXT(ctx context.Context, name, value string, expires time.Time) error
	// TXT returns the unexpired values at name, newest first. dnsauth.Challenges.
	TXT(ctx context.Context, name string) ([]string, error)
}

// MemStoreConfig configures a MemStore.
type MemStoreConfig struct {
	// Keep is how many values a name holds at once; adding one more drops the oldest. Zero: 2,
	// as acme-dns (a base name and its wildcard validate at the same time).
	Keep int
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// MemStore is a Store on go-memdb. It is safe for concurrent use.
type MemStore struct {
	db   *memdb.MemDB
	keep int
	now  func() time.Time
	mu   sync.Mutex // orders AddTXT sequence numbers
	seq  uint64
}

type accountRow struct {
	Account
}

type txtRow struct {
	Key     string // Name + "\x00" + Seq, zero-padded: unique and ordered
	Name    string
	Value   string
	Seq     uint64
	Expires int64 // Unix nanoseconds
}

// NewMemStore returns an empty MemStore.
func NewMemStore(cfg MemStoreConfig) *MemStore {
	schema := &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		"accounts": {Name: "accounts", Indexes: map[string]*memdb.IndexSchema{
			"id":        {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Username"}},
			"subdomain": {Name: "subdomain", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Subdomain"}},
		}},
		"txt": {Name: "txt", Indexes: map[string]*memdb.IndexSchema{
			"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			"name":    {Name: "name", Indexer: &memdb.StringFieldIndex{Field: "Name"}},
			"expires": {Name: "expires", Indexer: &memdb.IntFieldIndex{Field: "Expires"}},
		}},
	}}
	db, err := memdb.NewMemDB(schema)
	if err != nil {
		panic(fmt.Sprintf("acmedns: memdb schema: %v", err)) // a programming error, caught by every test
	}
	s := &MemStore{db: db, keep: cfg.Keep, now: cfg.Now}
	if s.keep <= 0 {
		s.keep = 2
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// CreateAccount implements Store.
func (s *MemStore) CreateAccount(ctx context.Context, a Account) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.Username == "" || a.Subdomain == "" {
		return fmt.Errorf("acmedns: account needs a username and a subdomain")
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	for _, idx := range []struct{ index, val string }{{"id", a.Username}, {"subdomain", a.Subdomain}} {
		if got, err := txn.First("accounts", idx.index, idx.val); err != nil {
			return err
		} else if got != nil {
			return fmt.Errorf("account %s %q: %w", idx.index, idx.val, ErrExists)
		}
	}
	a.AllowFrom = append([]netip.Prefix(nil), a.AllowFrom...)
	if err := txn.Insert("accounts", &accountRow{a}); err != nil {
		return err
	}
	txn.Commit()
	return nil
}

// Account implements Store.
func (s *MemStore) Account(ctx context.Context, username string) (Account, error) {
	if err := ctx.Err(); err != nil {
		return Account{}, err
	}
	got, err := s.db.Txn(false).First("accounts", "id", username)
	if err != nil {
		return Account{}, err
	}
	if got == nil {
		return Account{}, fmt.Errorf("account %q: %w", username, ErrNotFound)
	}
	a := got.(*accountRow).Account
	a.AllowFrom = append([]netip.Prefix(nil), a.AllowFrom...)
	return a, nil
}

// AddTXT implements Store. It also removes every expired value of every name.
func (s *MemStore) AddTXT(ctx context.Context, name, value string, expires time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	now := s.now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	txn := s.db.Txn(true)
	defer txn.Abort()
	// Expired values, oldest expiry first.
	it, err := txn.Get("txt", "expires")
	if err != nil {
		return err
	}
	var drop []*txtRow
	for obj := it.Next(); obj != nil; obj = it.Next() {
		r := obj.(*txtRow)
		if r.Expires > now {
			break
		}
		drop = append(drop, r)
	}
	// The name's oldest values beyond Keep-1, to make room for this one.
	it, err = txn.Get("txt", "name", name)
	if err != nil {
		return err
	}
	var rows []*txtRow
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if r := obj.(*txtRow); r.Expires > now {
			rows = append(rows, r)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Seq > rows[j].Seq })
	if len(rows) >= s.keep {
		drop = append(drop, rows[s.keep-1:]...)
	}
	for _, r := range drop {
		if err := txn.Delete("txt", r); err != nil {
			return err
		}
	}
	row := &txtRow{Key: fmt.Sprintf("%s\x00%020d", name, s.seq), Name: name, Value: value, Seq: s.seq, Expires: expires.UnixNano()}
	if err := txn.Insert("txt", row); err != nil {
		return err
	}
	txn.Commit()
	return nil
}

// TXT implements Store and dnsauth.Challenges.
func (s *MemStore) TXT(ctx context.Context, name string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	now := s.now().UnixNano()
	it, err := s.db.Txn(false).Get("txt", "name", name)
	if err != nil {
		return nil, err
	}
	var rows []*txtRow
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if r := obj.(*txtRow); r.Expires > now {
			rows = append(rows, r)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Seq > rows[j].Seq })
	vals := make([]string, len(rows))
	for i, r := range rows {
		vals[i] = r.Value
	}
	return vals, nil
}

var _ Store = (*MemStore)(nil)
