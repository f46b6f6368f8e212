/* _alloccap: a hard cap on what one thread makes the process allocate through Python's allocators.

Design (the simplest one that stays correct whatever was allocated before or elsewhere):

- install() wraps the PYMEM_DOMAIN_MEM and PYMEM_DOMAIN_OBJ allocators with PyMem_SetAllocator,
  and pymalloc's arena allocator with PyObject_SetArenaAllocator, delegating every call to the
  allocator that was there before. Blocks keep their layout (no header), so a block or arena
  allocated before the hooks, or by another thread, is freed exactly as it would have been, and
  the hooks may be added at any time. Each install keeps its own copy of the previous
  allocators, never freed: a chain built on an earlier install stays valid.
- The RAW domain is not wrapped: pymalloc serves requests above 512 bytes (for both wrapped
  domains) from PyMem_RawMalloc, so wrapping it would count those blocks twice. Python objects,
  lists, dicts, str/bytes/bytearray buffers, ints, decimal and regex buffers all come through
  MEM or OBJ.
- A Cap is armed on one thread (a thread-local pointer). While a thread has an armed Cap, what
  that thread makes the process allocate is charged to it, in one of two ways:
  * Small blocks (1..512 bytes) of a domain whose previous allocator is CPython's pymalloc
    (checked once per install: _PyMem_GetCurrentAllocatorName() says "pymalloc" at the first
    install, later installs compare the saved functions; and a CPython version whose pymalloc
    has that 512-byte threshold) are served from pymalloc's arenas.
    They are charged at arena granularity: every arena that pymalloc maps while the thread is
    armed is charged in full (recorded in the side table) until pymalloc unmaps it; the block
    itself passes straight through. This charges pool headers and fragmentation exactly, so
    freeing most of the objects in a pool gives nothing back while the pool lives. Small
    blocks the guest places in free room of arenas mapped earlier (by the host, or before
    arm()) are not charged: that memory is already the process's, so the process's growth
    while armed stays bounded by the limit. Arenas are shared by all threads: small objects
    of other threads allocating at the same time may land in an arena charged to the guest
    (and the guest's in theirs), so a guest's charge is the arenas its own requests made
    pymalloc map, not its own objects exactly; other threads are still never refused. If an arena is refused (limit) or the system
    fails to map one, pymalloc would fall back to PyMem_RawMalloc, an uncharged block: the
    hook frees that block and fails the allocation instead.
    This mode needs our arena hook to be the outermost arena allocator; arm() checks it, and
    when it is not (or the domain's allocator is not pymalloc) small blocks are charged one by
    one like large ones.
  * Every other block (0 bytes or above 512, or any block in per-block mode, and any block
    realloc()ed from a recorded block, which stays a raw block whatever its new size) is
    charged (its size rounded up to the unit of its size class, see encode()) and recorded in
    the Cap's side table: an open-addressing hash table of 8-byte slots holding the address
    (low 48 bits) and the encoded size (high 16 bits).
  free() and realloc() from any thread, and arena frees, look the address up in the tables of
  live Caps (usually none or one, and small: large blocks and arenas only): a recorded block is
  removed and its charge held (see below; an arena's is given back at once); any other block is
  passed through untouched. A block or arena recorded while armed and freed after disarm() is
  simply no longer tracked: disarm() drops the table.
- The table's own memory is charged to its Cap too (growth is refused past the limit), so host
  memory used on behalf of the guest is bounded by the limit.
- Freed memory is not always returned: glibc keeps freed chunks of its heap resident (and, after
  large blocks are freed, serves blocks of up to 32 MiB from that heap), and realloc() of a heap
  chunk it cannot grow in place copies it into a new block before freeing the old one. So the
  charge of a freed large block is held (still counted against the limit); freed arenas are
  given back at once, since pymalloc unmaps them. When an allocation does not fit and charges
  are held, the cap calls malloc_trim(0), which returns the free pages to the system, and gives
  the held charges back before deciding (without the trim while what it gave back untrimmed
  stays within limit/16). A realloc() that grows a block must fit its new size while the old
  block is still charged, and the charge of a moved block is held: a buffer grown in place
  therefore stops at about half the limit, and resident growth stays within it. A realloc()
  that shrinks a block this cap recorded is never refused (glibc shrinks in place).
- Past the limit an allocation returns NULL (CPython raises MemoryError) and the Cap is marked
  tripped. After a trip a reserve of RESERVE bytes is allowed, so the interpreter can build the
  exception that stops the run and unwind. Freeing never fails.
- Concurrency: the MEM and OBJ domains and pymalloc's arenas are only used with the GIL held
  (C API contract), and every table access happens inside those hooks or in Cap methods, also
  under the GIL; so the tables need no lock, and other threads (host threads, the watchdog)
  allocating concurrently are neither counted nor limited (an arena a host thread maps is not
  charged, even when the guest later fills it). Free-threaded builds are refused at import.
- Known limits: a block at an address above 2**48 is charged but not recorded (its charge is
  never given back: conservative); large blocks are charged their size class, not malloc's own
  bookkeeping around them (alloc_cap.py keeps a share of the limit for it).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define RESERVE ((size_t)4 << 20)
#define MIN_SLOTS 1024
#define ADDR_BITS 48
#define ADDR_MASK ((UINT64_C(1) << ADDR_BITS) - 1)
#define MAX_INSTALLS 16
#define SMALL_MAX 512  /* pymalloc's SMALL_REQUEST_THRESHOLD: larger (and 0-byte) requests go to malloc */

/* CPython versions whose pymalloc has that threshold; on others every block is charged one by one */
#define ARENA_CHARGE_KNOWN (PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030E0000)

typedef struct CapObject {
    PyObject_HEAD
    uint64_t *slots;          /* side table; NULL when empty */
    size_t mask;              /* number of slots - 1 */
    size_t count;             /* recorded blocks */
    size_t limit;
    size_t used;              /* charges of recorded blocks + table bytes + held */
    size_t held;              /* charges of freed blocks the C allocator may still keep resident */
    size_t untrimmed;         /* held charges given back without a trim since the last one */
    size_t peak;              /* most bytes live at once (used - held) */
    int tripped;
    int armed;                /* between arm() and disarm() */
    int by_arena;             /* small pymalloc blocks are charged through their arenas */
    unsigned arena_failures;  /* arenas refused (or not mapped) while this cap was current */
    unsigned long thread;     /* the arming thread */
    struct CapObject *prev_live, *next_live;
} CapObject;

typedef struct {
    PyMemAllocatorEx prev;
    int pymalloc;             /* prev is pymalloc: requests of 1..SMALL_MAX bytes come from its arenas */
} Domain;

static Domain domains[MAX_INSTALLS][2];          /* [install][0=MEM, 1=OBJ] */
static PyMemAllocatorEx pymalloc_funcs;          /* pymalloc's functions, when the first install saw them */
static int pymalloc_seen;
static PyObjectArenaAllocator prev_arena;        /* the arena allocator our arena hook wraps */
static int n_installs;
static CapObject *live;                          /* Caps with a table, for free() lookups */
static __thread CapObject *current __attribute__((tls_model("initial-exec")));

/* --- size encoding: 2-bit scale, 14-bit count of units (16 B, 4 KiB, 1 MiB, 256 MiB) ---- */

static int encode(size_t size, uint16_t *code, size_t *charge)
{
    if (size < ((size_t)16 << 14) - 15) {
        size_t units = size ? (size + 15) >> 4 : 1;
        *code = (uint16_t)units;
        *charge = units << 4;
        return 1;
    }
    for (unsigned scale = 0; scale < 4; scale++) {
        size_t unit = (size_t)16 << (8 * scale);
        size_t units = size / unit + (size % unit != 0);
        if (units == 0)
            units = 1;
        if (units < (1u << 14)) {
            *code = (uint16_t)((scale << 14) | units);
            *charge = units * unit;
            return 1;
        }
    }
    return 0;
}

static size_t decode(uint16_t code)
{
    return (size_t)(code & 0x3fff) * ((size_t)16 << (8 * (code >> 14)));
}

/* --- the side table ----------------------------------------------------------------------- */

static inline size_t slot_of(uint64_t addr, size_t mask)
{
    return (size_t)(((((addr >> 9) * UINT64_C(0x9E3779B97F4A7C15)) >> 20) << 5) | ((addr >> 4) & 31)) & mask;
}

static size_t allowance(CapObject *c)
{
    return c->limit + (c->tripped ? RESERVE : 0);
}

/* Give the held charges back. The C allocator is trimmed first (its free pages returned to the
   system) unless what was given back untrimmed since the last trim stays within limit/16, part of
   the share of memory_bytes that alloc_cap.py keeps: a trim walks every arena of the process, so
   a guest freeing and allocating at its limit does not trim on every allocation. */
static void release_held(CapObject *c)
{
    if (c->held > c->limit / 16 || c->untrimmed > c->limit / 16 - c->held) {
#ifdef __GLIBC__
        malloc_trim(0);
#endif
        c->untrimmed = 0;
    } else {
        c->untrimmed += c->held;
    }
    c->used -= c->held;
    c->held = 0;
}

static int fits(CapObject *c, size_t charge)
{
    size_t allow = allowance(c);
    return c->used <= allow && charge <= allow - c->used;
}

static int admit(CapObject *c, size_t charge)
{
    if (fits(c, charge))
        return 1;
    if (c->held && charge <= allowance(c)) {
        release_held(c);
        if (fits(c, charge))
            return 1;
    }
    c->tripped = 1;
    return 0;
}

static void charge_add(CapObject *c, size_t charge)
{
    c->used += charge;
    if (c->used - c->held > c->peak)
        c->peak = c->used - c->held;
}

/* A recorded block of ``c`` was freed (or moved by realloc): glibc keeps freed heap chunks
   resident, and may have copied a moved block, so its charge stays counted until release_held. */
static void hold(CapObject *c, size_t charge)
{
    c->held += charge;
}

static void live_add(CapObject *c)
{
    c->prev_live = NULL;
    c->next_live = live;
    if (live)
        live->prev_live = c;
    live = c;
}

static void live_remove(CapObject *c)
{
    if (c->prev_live)
        c->prev_live->next_live = c->next_live;
    else if (live == c)
        live = c->next_live;
    if (c->next_live)
        c->next_live->prev_live = c->prev_live;
    c->prev_live = c->next_live = NULL;
}

static void raw_insert(uint64_t *slots, size_t mask, uint64_t entry)
{
    size_t i = slot_of(entry & ADDR_MASK, mask);
    while (slots[i])
        i = (i + 1) & mask;
    slots[i] = entry;
}

/* Make room for one more entry (load factor at most 3/4), charging the table's growth.
   Returns 0 on success, -1 when the limit or the system refuses the memory. */
static int table_reserve(CapObject *c)
{
    size_t slots_now = c->slots ? c->mask + 1 : 0;
    if (c->slots && (c->count + 1) * 4 <= slots_now * 3)
        return 0;
    size_t new_slots = slots_now ? slots_now * 2 : MIN_SLOTS;
    size_t new_bytes = new_slots * sizeof(uint64_t);
    if (!admit(c, new_bytes))
        return -1;
    uint64_t *fresh = calloc(new_slots, sizeof(uint64_t));
    if (fresh == NULL)
        return -1;
    for (size_t i = 0; i < slots_now; i++)
        if (c->slots[i])
            raw_insert(fresh, new_slots - 1, c->slots[i]);
    if (c->slots)
        free(c->slots);
    else
        live_add(c);
    charge_add(c, new_bytes);
    hold(c, slots_now * sizeof(uint64_t));
    c->slots = fresh;
    c->mask = new_slots - 1;
    return 0;
}

static void table_insert(CapObject *c, void *ptr, uint16_t code)
{
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    if (addr & ~ADDR_MASK)
        return;  /* charged, never given back */
    raw_insert(c->slots, c->mask, addr | ((uint64_t)code << ADDR_BITS));
    c->count++;
}

/* Remove ``addr`` from ``c``'s table; returns its encoded size, or 0 when absent. */
static uint16_t table_remove(CapObject *c, uint64_t addr)
{
    size_t mask = c->mask, i = slot_of(addr, mask);
    uint64_t *slots = c->slots;
    while (slots[i]) {
        if ((slots[i] & ADDR_MASK) == addr) {
            uint16_t code = (uint16_t)(slots[i] >> ADDR_BITS);
            /* backward-shift deletion keeps every probe chain unbroken */
            size_t hole = i, j = i;
            for (;;) {
                j = (j + 1) & mask;
                if (!slots[j])
                    break;
                size_t home = slot_of(slots[j] & ADDR_MASK, mask);
                if (((j - home) & mask) >= ((j - hole) & mask)) {
                    slots[hole] = slots[j];
                    hole = j;
                }
            }
            slots[hole] = 0;
            c->count--;
            return code;
        }
        i = (i + 1) & mask;
    }
    return 0;
}

/* Stop tracking ``ptr`` in whichever live Cap recorded it: its charge is given back, or held
   when the C allocator may keep the block's memory resident (see hold()). */
static __attribute__((noinline)) void untrack_slow(void *ptr, int resident)
{
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    for (CapObject *c = live; c != NULL; c = c->next_live) {
        uint16_t code = table_remove(c, addr);
        if (code) {
            if (resident)
                hold(c, decode(code));
            else
                c->used -= decode(code);
            return;
        }
    }
}

/* untrack(), with the common case inline: the tables hold few entries (large blocks and
   arenas), so the home slot of a freed small block is almost always empty. */
static inline void untrack(void *ptr, int resident)
{
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    for (CapObject *c = live; c != NULL; c = c->next_live) {
        if (c->slots[slot_of(addr, c->mask)]) {
            untrack_slow(ptr, resident);
            return;
        }
    }
}

static void table_drop(CapObject *c)
{
    if (c->slots) {
        live_remove(c);
        c->used -= (c->mask + 1) * sizeof(uint64_t);
        free(c->slots);
        c->slots = NULL;
    }
    c->mask = 0;
    c->count = 0;
}

/* --- the hooks (ctx is the previous allocator of the domain) ------------------------------ */

static void *counted_alloc(CapObject *c, PyMemAllocatorEx *prev, size_t nelem, size_t elsize, int zero)
{
    uint16_t code;
    size_t charge;
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    if (!encode(nelem * elsize, &code, &charge)) {
        c->tripped = 1;
        return NULL;
    }
    if (!admit(c, charge) || table_reserve(c) < 0 || !admit(c, charge))
        return NULL;
    void *p = zero ? prev->calloc(prev->ctx, nelem, elsize) : prev->malloc(prev->ctx, nelem * elsize);
    if (p != NULL) {
        table_insert(c, p, code);
        charge_add(c, charge);
    }
    return p;
}

static int is_small(size_t size)
{
    return size - 1 < SMALL_MAX;  /* 0 wraps around: pymalloc hands 0-byte requests to malloc */
}

/* A small request passed to pymalloc (realloc when ``ptr`` is not NULL, calloc when ``zero``);
   ``*fell_back`` says whether the arena hook failed during the call, so that pymalloc fell
   back to an uncharged raw block for the result. */
static void *small_call(CapObject *c, PyMemAllocatorEx *prev, void *ptr, size_t nelem, size_t elsize, int zero,
                        int *fell_back)
{
    unsigned failures = c->arena_failures;
    void *p = ptr != NULL ? prev->realloc(prev->ctx, ptr, nelem * elsize)
              : zero ? prev->calloc(prev->ctx, nelem, elsize) : prev->malloc(prev->ctx, nelem * elsize);
    *fell_back = p != NULL && c->arena_failures != failures;
    return p;
}

/* A small request served by pymalloc: its arena (if a new one is needed) is what is charged.
   A raw fallback block (see small_call) is given back and the allocation fails. */
static void *small_alloc(CapObject *c, PyMemAllocatorEx *prev, size_t nelem, size_t elsize, int zero)
{
    int fell_back;
    void *p = small_call(c, prev, NULL, nelem, elsize, zero, &fell_back);
    if (fell_back) {
        prev->free(prev->ctx, p);
        return NULL;
    }
    return p;
}

static void *hook_malloc(void *ctx, size_t size)
{
    Domain *d = ctx;
    CapObject *c = current;
    if (c == NULL)
        return d->prev.malloc(d->prev.ctx, size);
    if (d->pymalloc && c->by_arena && is_small(size))
        return small_alloc(c, &d->prev, size, 1, 0);
    return counted_alloc(c, &d->prev, size, 1, 0);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    Domain *d = ctx;
    CapObject *c = current;
    if (c == NULL)
        return d->prev.calloc(d->prev.ctx, nelem, elsize);
    if (d->pymalloc && c->by_arena && (elsize == 0 || nelem <= SMALL_MAX / elsize) && is_small(nelem * elsize))
        return small_alloc(c, &d->prev, nelem, elsize, 1);
    return counted_alloc(c, &d->prev, nelem, elsize, 1);
}

static CapObject *owner_of(uint64_t addr, uint16_t *code)
{
    for (CapObject *c = live; c != NULL; c = c->next_live) {
        size_t i = slot_of(addr, c->mask);
        while (c->slots[i]) {
            if ((c->slots[i] & ADDR_MASK) == addr) {
                *code = (uint16_t)(c->slots[i] >> ADDR_BITS);
                return c;
            }
            i = (i + 1) & c->mask;
        }
    }
    return NULL;
}

static void *hook_realloc(void *ctx, void *ptr, size_t size)
{
    Domain *d = ctx;
    PyMemAllocatorEx *prev = &d->prev;
    CapObject *c = current;
    if (ptr == NULL)
        return c == NULL ? prev->realloc(prev->ctx, NULL, size) : hook_malloc(ctx, size);
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    uint16_t old_code = 0, new_code = 0;
    size_t new_charge = 0;
    CapObject *owner = live ? owner_of(addr, &old_code) : NULL;
    if (c != NULL && owner == NULL && d->pymalloc && c->by_arena && is_small(size)) {
        /* an unrecorded block: a pymalloc block (the result is one too, arena-charged) or a raw
           block from before arm() or another thread, which pymalloc reallocs in place of malloc
           to at most SMALL_MAX bytes: no more than that block already held, plus SMALL_MAX */
        int fell_back;
        void *q = small_call(c, prev, ptr, size, 1, 0, &fell_back);
        if (fell_back) {
            /* pymalloc moved the block into a raw fallback block and already freed the old one,
               so failing is not an option: the raw block is charged (the cap has tripped) */
            encode(size, &new_code, &new_charge);
            if (table_reserve(c) == 0)
                table_insert(c, q, new_code);
            charge_add(c, new_charge);  /* when not recorded: never given back, conservative */
        }
        return q;
    }
    if (c != NULL) {
        if (!encode(size, &new_code, &new_charge)) {
            c->tripped = 1;
            return NULL;
        }
        /* a growing block's old block stays charged during the call: the allocator may copy into
           a new block before it frees the old one (glibc does for a chunk in its heap) */
        int shrinks = owner == c && new_charge <= decode(old_code);
        if ((owner != c && table_reserve(c) < 0) || (!shrinks && !admit(c, new_charge)))
            return NULL;
    }
    void *q = prev->realloc(prev->ctx, ptr, size);
    if (q == NULL)
        return NULL;  /* the old block is unchanged, and so is its record */
    if (owner != NULL) {
        table_remove(owner, addr);
        if (q != ptr)
            hold(owner, decode(old_code));
        else
            owner->used -= decode(old_code);
    }
    if (c != NULL) {
        table_insert(c, q, new_code);
        charge_add(c, new_charge);
    }
    return q;
}

static void hook_free(void *ctx, void *ptr)
{
    Domain *d = ctx;
    if (ptr != NULL && live != NULL)
        untrack(ptr, 1);
    d->prev.free(d->prev.ctx, ptr);
}

/* pymalloc's arenas: charged in full to the current cap when it charges small blocks by arena. */
static void *hook_arena_alloc(void *ctx, size_t size)
{
    CapObject *c = current;
    if (c == NULL || !c->by_arena)
        return prev_arena.alloc(prev_arena.ctx, size);
    uint16_t code;
    size_t charge;
    void *p = NULL;
    if (encode(size, &code, &charge) && admit(c, charge) && table_reserve(c) == 0 && admit(c, charge))
        p = prev_arena.alloc(prev_arena.ctx, size);
    else
        c->tripped = 1;
    if (p == NULL) {
        c->arena_failures++;
        return NULL;
    }
    table_insert(c, p, code);
    charge_add(c, charge);
    return p;
}

static void hook_arena_free(void *ctx, void *ptr, size_t size)
{
    if (ptr != NULL && live != NULL)
        untrack(ptr, 0);  /* pymalloc unmaps its arenas: the pages are returned at once */
    prev_arena.free(prev_arena.ctx, ptr, size);
}

static int same_allocator(const PyMemAllocatorEx *a, const PyMemAllocatorEx *b)
{
    return a->ctx == b->ctx && a->malloc == b->malloc && a->calloc == b->calloc && a->realloc == b->realloc
           && a->free == b->free;
}

static void install_domain(PyMemAllocatorDomain domain, int index)
{
    Domain *saved = &domains[n_installs][index];
    PyMem_GetAllocator(domain, &saved->prev);
    saved->pymalloc = pymalloc_seen && same_allocator(&saved->prev, &pymalloc_funcs);
    PyMemAllocatorEx hook = {saved, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(domain, &hook);
}

/* Our arena hook is pymalloc's outermost arena allocator (only then are arenas charged). */
static int arena_hook_in_force(void)
{
    PyObjectArenaAllocator now;
    PyObject_GetArenaAllocator(&now);
    return now.alloc == hook_arena_alloc && now.free == hook_arena_free;  /* only install() sets them */
}

/* Our hooks are the outermost allocator of both domains (only install_domain sets them): every
   allocation of the domains reaches them, which the probe would only confirm. */
static int hooks_outermost(void)
{
    PyMemAllocatorEx now;
    PyMemAllocatorDomain domains_[2] = {PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};
    for (int i = 0; i < 2; i++) {
        PyMem_GetAllocator(domains_[i], &now);
        if (now.malloc != hook_malloc || now.calloc != hook_calloc || now.realloc != hook_realloc
                || now.free != hook_free)
            return 0;
    }
    return 1;
}

/* Wrap the domains whose current chain does not reach our hooks (checked by the caller). */
static int install(int mem, int obj)
{
    if (!mem && !obj)
        return 0;
    if (n_installs >= MAX_INSTALLS) {
        PyErr_SetString(PyExc_RuntimeError, "the allocator hooks were removed too many times");
        return -1;
    }
    if (n_installs == 0) {
        const char *name = _PyMem_GetCurrentAllocatorName();
        if (ARENA_CHARGE_KNOWN && name != NULL && strcmp(name, "pymalloc") == 0) {
            PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &pymalloc_funcs);
            pymalloc_seen = 1;
        }
        PyObject_GetArenaAllocator(&prev_arena);
        PyObjectArenaAllocator hook = {NULL, hook_arena_alloc, hook_arena_free};
        PyObject_SetArenaAllocator(&hook);
    }
    if (mem)
        install_domain(PYMEM_DOMAIN_MEM, 0);
    if (obj)
        install_domain(PYMEM_DOMAIN_OBJ, 1);
    n_installs++;
    return 0;
}

/* With ``c`` current: which domains actually reach the hooks (a probe allocation each, large
   enough to be recorded whatever the mode). */
static void probe(CapObject *c, int *mem_ok, int *obj_ok)
{
    size_t before = c->used;
    void *p = PyMem_Malloc(SMALL_MAX + 1);
    *mem_ok = p != NULL && c->used != before;
    PyMem_Free(p);
    before = c->used;
    p = PyObject_Malloc(SMALL_MAX + 1);
    *obj_ok = p != NULL && c->used != before;
    PyObject_Free(p);
}

/* --- the Cap type ------------------------------------------------------------------------- */

static PyObject *Cap_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Cap", kwlist))
        return NULL;
    return type->tp_alloc(type, 0);
}

static void Cap_dealloc(CapObject *self)
{
    if (current == self)
        current = NULL;
    table_drop(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Cap_arm(CapObject *self, PyObject *arg)
{
    unsigned long long limit = PyLong_AsUnsignedLongLong(arg);
    if (limit == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (current != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a cap is already armed on this thread");
        return NULL;
    }
    if (self->armed) {
        PyErr_SetString(PyExc_RuntimeError, "this cap is armed on another thread");
        return NULL;
    }
    table_drop(self);
    self->limit = (size_t)limit;
    self->used = self->held = self->untrimmed = self->peak = 0;
    self->tripped = 0;
    self->arena_failures = 0;
    self->by_arena = 0;  /* decided below, once the hooks are known to be in force */
    self->armed = 1;
    self->thread = PyThread_get_thread_ident();
    Py_INCREF(self);  /* an armed cap outlives its arming thread's reference */
    current = self;
    int mem_ok = 1, obj_ok = 1;
    if (!hooks_outermost())  /* another allocator was set over ours: do allocations still reach us? */
        probe(self, &mem_ok, &obj_ok);
    if (!(mem_ok && obj_ok)) {
        current = NULL;
        int failed = install(!mem_ok, !obj_ok);
        current = self;
        if (failed == 0)
            probe(self, &mem_ok, &obj_ok);
        if (failed < 0 || !(mem_ok && obj_ok)) {
            current = NULL;
            self->armed = 0;
            table_drop(self);
            Py_DECREF(self);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "the allocator hooks are not in force");
            return NULL;
        }
    }
    self->by_arena = pymalloc_seen && arena_hook_in_force();
    self->peak = self->used - self->held;  /* any probe's blocks are freed: only the table is live */
    Py_RETURN_NONE;
}

static PyObject *Cap_pause(CapObject *self, PyObject *Py_UNUSED(ignored))
{
    if (current == self)
        current = NULL;
    Py_RETURN_NONE;
}

static PyObject *Cap_resume(CapObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->armed || self->thread != PyThread_get_thread_ident())
        Py_RETURN_NONE;  /* not armed, or called from another thread: nothing to resume here */
    if (current != NULL && current != self) {
        PyErr_SetString(PyExc_RuntimeError, "another cap is armed on this thread");
        return NULL;
    }
    current = self;
    Py_RETURN_NONE;
}

static PyObject *Cap_disarm(CapObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->armed && self->thread != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "disarm() must be called on the thread that armed the cap");
        return NULL;
    }
    if (current == self)
        current = NULL;
    table_drop(self);
    if (self->armed) {
        self->armed = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *Cap_get_used(CapObject *self, void *closure) { return PyLong_FromSize_t(self->used - self->held); }
static PyObject *Cap_get_held(CapObject *self, void *closure) { return PyLong_FromSize_t(self->held); }
static PyObject *Cap_get_peak(CapObject *self, void *closure) { return PyLong_FromSize_t(self->peak); }
static PyObject *Cap_get_limit(CapObject *self, void *closure) { return PyLong_FromSize_t(self->limit); }
static PyObject *Cap_get_tripped(CapObject *self, void *closure) { return PyBool_FromLong(self->tripped); }
static PyObject *Cap_get_blocks(CapObject *self, void *closure) { return PyLong_FromSize_t(self->count); }
static PyObject *Cap_get_armed(CapObject *self, void *closure) { return PyBool_FromLong(self->armed); }
static PyObject *Cap_get_by_arena(CapObject *self, void *closure) { return PyBool_FromLong(self->by_arena); }

static PyMethodDef Cap_methods[] = {
    {"arm", (PyCFunction)Cap_arm, METH_O,
     "arm(limit): reset the counters and count (and cap at limit bytes) what this thread allocates."},
    {"pause", (PyCFunction)Cap_pause, METH_NOARGS, "Stop counting this thread's allocations until resume()."},
    {"resume", (PyCFunction)Cap_resume, METH_NOARGS,
     "Count again after pause(); does nothing unless called on the arming thread while armed."},
    {"disarm", (PyCFunction)Cap_disarm, METH_NOARGS,
     "Stop counting and forget the recorded blocks; used, peak and tripped stay readable."},
    {NULL}
};

static PyGetSetDef Cap_getset[] = {
    {"used", (getter)Cap_get_used, NULL, "Bytes live now (counted blocks and the side table).", NULL},
    {"held", (getter)Cap_get_held, NULL,
     "Bytes of freed blocks still counted against the limit: the C allocator may keep them resident "
     "until the next trim, which a refused allocation triggers.", NULL},
    {"peak", (getter)Cap_get_peak, NULL, "Most bytes live at once since arm().", NULL},
    {"limit", (getter)Cap_get_limit, NULL, "The limit given to arm().", NULL},
    {"tripped", (getter)Cap_get_tripped, NULL, "True once an allocation was refused since arm().", NULL},
    {"blocks", (getter)Cap_get_blocks, NULL, "Blocks recorded (allocated while armed, not yet freed).", NULL},
    {"armed", (getter)Cap_get_armed, NULL, "True between arm() and disarm().", NULL},
    {"small_by_arena", (getter)Cap_get_by_arena, NULL,
     "True when the last arm() found pymalloc and our arena hook in force: small blocks from a "
     "domain whose hooked allocator is pymalloc are charged through their arenas (others one by one).", NULL},
    {NULL}
};

static PyTypeObject CapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtimes.restricted._alloccap.Cap",
    .tp_basicsize = sizeof(CapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A per-thread allocation cap (see the module's source for the design).",
    .tp_new = Cap_new,
    .tp_dealloc = (destructor)Cap_dealloc,
    .tp_methods = Cap_methods,
    .tp_getset = Cap_getset,
};

static PyObject *module_trim(PyObject *self, PyObject *unused)
{
#ifdef __GLIBC__
    malloc_trim(0);
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef module_methods[] = {
    {"trim", module_trim, METH_NOARGS,
     "Give the C allocator's free heap memory back to the system (glibc malloc_trim); "
     "False where the C library has no such call."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_alloccap",
    "Counts and caps what one thread allocates through PyMem/PyObject allocators.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__alloccap(void)
{
#ifdef Py_GIL_DISABLED
    PyErr_SetString(PyExc_ImportError, "_alloccap relies on the GIL and does not support free-threaded builds");
    return NULL;
#endif
    PyObject *module = PyModule_Create(&moduledef);
    if (module == NULL)
        return NULL;
    if (PyModule_AddType(module, &CapType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (install(1, 1) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
