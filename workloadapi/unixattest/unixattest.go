package unixattest

import (
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/internal/peercred"
)

// Defaults for the zero values of Config.
const (
	// DefaultMaxHashSize is the largest executable hashed by default.
	DefaultMaxHashSize = 256 << 20
	// DefaultHashCacheSize is how many executable hashes are remembered by
	// default.
	DefaultHashCacheSize = 1024
	// DefaultMaxConcurrentHashes is how many executables are hashed at once
	// by default.
	DefaultMaxConcurrentHashes = 2
)

const (
	// ctimeSettle is how old an executable's ctime must be, when hashing
	// starts, for its hash to be cached or shared. File timestamps are
	// coarse (a clock tick, and whole seconds on some filesystems): a file
	// rewritten within one tick of its last change keeps its key, so a hash
	// of a file changed that recently is used once and forgotten.
	ctimeSettle = 3 * time.Second
	// nameTTL is how long a user or group name lookup is remembered.
	nameTTL = time.Minute
	// maxNames bounds each name cache (users and groups).
	maxNames = 8192
)

// Errors callers and tests branch on. Any other error from Pin, Check or
// Selectors also means the caller is not attested.
var (
	// ErrNoPID means the peer's PID is 0: it runs in a PID namespace the
	// attestor cannot see, so it cannot be identified.
	ErrNoPID = errors.New("unixattest: peer has no PID in this PID namespace")
	// ErrProcessChanged means the process is not, or is no longer, the one
	// that connected: it exited, its PID was reused, its effective uid or
	// gid changed, or it executed another program.
	ErrProcessChanged = errors.New("unixattest: process is not the one that connected")
	// ErrExecutableReplaced means the executable the process runs was
	// deleted or replaced on disk after it started, so its path no longer
	// names it.
	ErrExecutableReplaced = errors.New("unixattest: executable was deleted or replaced since the process started")
	// ErrExecutableTooLarge means the executable is larger than
	// Config.MaxHashSize, so it has no sha256 selector.
	ErrExecutableTooLarge = errors.New("unixattest: executable is larger than the hash size limit")
	// ErrClosed is returned by a Process after Close.
	ErrClosed = errors.New("unixattest: process handle is closed")
)

// Config configures an Attestor. The zero value is ready to use.
type Config struct {
	// MaxHashSize is the size, in bytes, of the largest executable that is
	// hashed. Attestation of a process whose executable is larger fails
	// with ErrExecutableTooLarge. Zero or less means DefaultMaxHashSize.
	MaxHashSize int64
	// HashCacheSize is how many executable hashes are remembered (least
	// recently used are dropped first). Zero means DefaultHashCacheSize;
	// less than zero disables the cache.
	HashCacheSize int
	// MaxConcurrentHashes bounds how many executables are hashed at once,
	// and so the CPU and I/O that callers with new binaries can take.
	// Zero or less means DefaultMaxConcurrentHashes.
	MaxConcurrentHashes int
	// Logger receives debug records and a warning if pidfds are not
	// available. Nil discards them.
	Logger *slog.Logger
	// Clock tells the age of executables (see the caveats in the package
	// documentation) and expires cached user and group names. Nil means
	// the system clock.
	Clock clock.Clock
	// ProcRoot is where procfs is mounted for the PID namespace the peer
	// credentials are in. Empty means "/proc".
	ProcRoot string
}

// Attestor turns the peer credentials of Workload API connections into
// pinned processes and computes their unix selectors. It is safe for
// concurrent use.
type Attestor struct {
	maxHashSize int64
	procRoot    string
	log         *slog.Logger
	clock       clock.Clock
	hashes      *hashCache
	names       *nameCache
	// hashSlots holds a token while an executable is hashed.
	hashSlots chan struct{}
	// noPidfd is set once pidfd_open has been found unavailable; Pin then
	// pins by /proc directory only.
	noPidfd   atomic.Bool
	warnPidfd sync.Once
	hashCount atomic.Int64 // executables hashed; for tests
	// identities remembers selectors by pinned process identity.
	identities   identityCache
	computeCount atomic.Int64 // selector computations; for tests
	selfFDPath   string       // procRoot + "/self/fd/"
}

// New returns an Attestor configured by cfg.
func New(cfg Config) *Attestor {
	a := &Attestor{
		maxHashSize: cfg.MaxHashSize,
		procRoot:    cfg.ProcRoot,
		log:         cfg.Logger,
		clock:       cfg.Clock,
	}
	if a.maxHashSize <= 0 {
		a.maxHashSize = DefaultMaxHashSize
	}
	if a.procRoot == "" {
		a.procRoot = "/proc"
	}
	a.procRoot = filepath.Clean(a.procRoot)
	a.selfFDPath = a.procRoot + "/self/fd/"
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.clock == nil {
		a.clock = clock.Real()
	}
	size := cfg.HashCacheSize
	if size == 0 {
		size = DefaultHashCacheSize
	}
	a.hashes = newHashCache(max(size, 0))
	a.names = newNameCache(a.clock, a.log)
	slots := cfg.MaxConcurrentHashes
	if slots <= 0 {
		slots = DefaultMaxConcurrentHashes
	}
	a.hashSlots = make(chan struct{}, slots)
	return a
}

// Cred returns the peer credentials the process was pinned with.
func (p *Process) Cred() peercred.Cred { return p.cred }

// Log attribute keys.
const (
	keyStart = "start_ticks"
	keyPidfd = "pidfd"
)
