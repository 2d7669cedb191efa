//! Interrupting a guest's running code without ending it: CPython's `KeyboardInterrupt`,
//! raised where the code is (a busy loop, `time.sleep`, `input()`), as Ctrl-C would; QuickJS's
//! uncatchable `InternalError: interrupted`, which its interpreter raises when the host's
//! interrupt poll says so ([`Interrupter::attach_polled`], [`Interrupter::poll`]).
//!
//! A runtime that supports it names an [`InterruptAddrs`]: guest addresses of the main thread's
//! `async_exc` and `eval_breaker` words and of the exception to raise (the guest build finds them,
//! `guests/build/src/interrupt.rs`). Delivering writes the exception into `async_exc` and sets the
//! asynchronous-exception bit in `eval_breaker`; the interpreter raises it at its next check
//! (every loop iteration, call, and return from a builtin).
//!
//! A session takes requests while a cell runs, and delivers them only while the cell's own code
//! runs (the runner says when it starts and returns, `cell-code`): never into the runner's code
//! around the cell, where a `KeyboardInterrupt` would end the session instead of the cell.
//!
//! The caller's [`Interrupter::request`] only sets a flag and wakes waiters, from any thread.
//! Guest memory is written only where the guest is not executing and on the thread that runs
//! it: in the epoch callback (a busy guest, within one tick), and in the stdin and sleep
//! pollables, which return early so a blocked `input()` or `time.sleep` ends at once.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// `_PY_ASYNC_EXCEPTION_BIT` (CPython 3.14, `Include/internal/pycore_ceval.h`).
pub(crate) const ASYNC_EXCEPTION_BIT: u32 = 1 << 3;

/// Where, in a guest's linear memory, an interrupt is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptAddrs {
    /// The main thread state's `eval_breaker` word.
    pub eval_breaker: u32,
    /// The main thread state's `async_exc` word.
    pub async_exc: u32,
    /// The exception type object to raise.
    pub exception: u32,
}

impl InterruptAddrs {
    /// Reads the form [`std::fmt::Display`] writes: three decimal addresses (`eval_breaker`,
    /// `async_exc`, `exception`), nothing more. How a runtime's build hands its addresses over.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace().map(|w| w.parse::<u32>().ok());
        let addrs = InterruptAddrs {
            eval_breaker: words.next()??,
            async_exc: words.next()??,
            exception: words.next()??,
        };
        words.next().is_none().then_some(addrs)
    }
}

impl std::fmt::Display for InterruptAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.eval_breaker, self.async_exc, self.exception
        )
    }
}

/// Where CRuby records a signal, in a guest's linear memory: what its SIGINT handler would
/// write (`signal_buff.cnt[SIGINT]`, `signal_buff.size`, and the trap bit of the running
/// execution context's `interrupt_flag`), so the VM raises `Interrupt` at its next check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSite {
    /// `signal_buff`: `rb_atomic_t cnt[65]; rb_atomic_t size;`.
    pub signal_buff: u32,
    /// `ruby_current_ec`: the running `rb_execution_context_t *`.
    pub current_ec: u32,
}

impl SignalSite {
    const SIGINT: u32 = 2;
    /// `offsetof(signal_buff, size)`.
    const SIZE: u32 = 65 * 4;
    /// `offsetof(rb_execution_context_t, interrupt_flag)`.
    const INTERRUPT_FLAG: u32 = 0x10;
    /// `TRAP_INTERRUPT_MASK`.
    const TRAP: u32 = 0x08;
}

/// Where an interrupt goes: words of a live guest memory, or a flag the guest polls.
enum Target {
    Memory {
        base: NonNull<u8>,
        len: usize,
        addrs: InterruptAddrs,
    },
    Signal {
        base: NonNull<u8>,
        len: usize,
        site: SignalSite,
    },
    Polled,
}

// SAFETY: the pointer is only dereferenced by `Interrupter::deliver` and `withdraw`, which run on
// the thread running the store, while its guest is not executing (see the module docs); the
// store owns the memory for as long as the target is attached (`GuestState` detaches it before
// the instance goes).
#[allow(unsafe_code)]
unsafe impl Send for Target {}

/// One run's interrupt: requested by the caller, delivered into the guest by the run's side.
#[derive(Default)]
pub struct Interrupter {
    requested: AtomicBool,
    /// Interrupts are taken (a script, a REPL statement or a cell is running).
    armed: AtomicBool,
    /// Taken interrupts are delivered now: always for a script or a REPL; for a session, only
    /// while its cell's own code runs (`GuestState::cell_code`), never in the runner around it.
    open: AtomicBool,
    wake: Notify,
    target: Mutex<Option<Target>>,
    /// (polled) Delivered, not yet taken by the guest's poll.
    raised: AtomicBool,
    /// (polled) The guest's poll took an interrupt since [`Interrupter::took`] last asked.
    taken: AtomicBool,
}

impl Interrupter {
    /// An interrupter that takes requests from the start (a script or a REPL).
    pub fn armed() -> Self {
        Interrupter {
            armed: AtomicBool::new(true),
            open: AtomicBool::new(true),
            ..Default::default()
        }
    }

    fn target(&self) -> std::sync::MutexGuard<'_, Option<Target>> {
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this guest can be interrupted at all (its runtime names its addresses).
    pub fn supported(&self) -> bool {
        self.target().is_some()
    }

    /// Asks for an interrupt; false if nothing runs that could take one (no addresses, or a session
    /// between cells). Any thread.
    pub fn request(&self) -> bool {
        if !self.armed.load(Ordering::Acquire) || !self.supported() {
            return false;
        }
        self.requested.store(true, Ordering::Release);
        self.wake.notify_waiters();
        true
    }

    /// Takes a requested interrupt instead of delivering it: a blocking host call that the
    /// request ended raises it in the guest itself. Whether one was requested.
    pub(crate) fn take(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }

    /// Whether an interrupt waits for delivery (cheap: the epoch callback asks every tick).
    pub fn pending(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Waits until an interrupt is requested and may be delivered.
    pub async fn requested(&self) {
        loop {
            let notified = self.wake.notified();
            if self.pending() && self.open.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Points the interrupter at a guest's memory. Called on the store's thread right after
    /// instantiation; `base`/`len` are the instance's first memory.
    ///
    /// # Safety
    ///
    /// `base` must point to `len` bytes of the guest's linear memory that stay mapped at that
    /// address until [`Interrupter::detach`] (a pooled memory slot never moves; `GuestState`
    /// detaches before its instance goes), and the caller must keep this interrupter's writes
    /// to the thread that runs the store, while the guest does not execute (as
    /// [`Interrupter::deliver`] and `withdraw` do): they write two of those bytes' words.
    #[allow(unsafe_code)]
    pub unsafe fn attach(&self, base: NonNull<u8>, len: usize, addrs: InterruptAddrs) {
        *self.target() = Some(Target::Memory { base, len, addrs });
    }

    /// Points the interrupter at a CRuby guest's memory: an interrupt is a SIGINT recorded where
    /// its handler would record it ([`SignalSite`]).
    ///
    /// # Safety
    ///
    /// As for [`Interrupter::attach`]: `base`/`len` stay mapped until [`Interrupter::detach`],
    /// written only on the store's thread while the guest does not execute.
    #[allow(unsafe_code)]
    pub unsafe fn attach_signal(&self, base: NonNull<u8>, len: usize, site: SignalSite) {
        *self.target() = Some(Target::Signal { base, len, site });
    }

    /// Makes interrupts a flag the guest polls ([`Interrupter::poll`]) instead of words written
    /// into its memory: for an interpreter that asks its host whether to stop (QuickJS).
    pub fn attach_polled(&self) {
        *self.target() = Some(Target::Polled);
    }

    /// The guest asks whether to stop now: delivers a requested interrupt first (when delivery
    /// is open). Cheap; called by the guest's interpreter every few thousand instructions.
    pub fn poll(&self) -> bool {
        self.deliver();
        let stop = self.raised.swap(false, Ordering::AcqRel);
        if stop {
            self.taken.store(true, Ordering::Release);
        }
        stop
    }

    /// Whether the guest's poll took an interrupt since the last time this was asked.
    pub fn took(&self) -> bool {
        self.taken.swap(false, Ordering::AcqRel)
    }

    /// Moves another interrupter's target here (a warm instance handed to its run).
    pub(crate) fn take_target_from(&self, other: &Interrupter) {
        let target = other.target().take();
        *self.target() = target;
    }

    /// Forgets the guest's memory (its instance is going away).
    pub fn detach(&self) {
        *self.target() = None;
    }

    /// Starts or stops taking requests (a session takes them only while a cell runs). Stopping
    /// also withdraws an interrupt not yet raised, so it cannot hit the next cell.
    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::Release);
        if !armed {
            self.open.store(false, Ordering::Release);
            self.requested.store(false, Ordering::Release);
            self.withdraw();
        }
    }

    /// Opens or closes delivery (a session's cell's own code starts or returns). Closing
    /// withdraws an interrupt written and not yet raised; a request not yet delivered waits for
    /// the next opening, or for the cell's end, which drops it. Only on the store's thread while
    /// the guest is not executing.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
        if !open {
            self.withdraw();
        } else if self.pending() {
            self.wake.notify_waiters();
        }
    }

    /// Writes a requested interrupt into the guest. Returns whether it did. Only on the store's
    /// thread while the guest is not executing; while delivery is closed the request waits.
    pub fn deliver(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        if !self.requested.swap(false, Ordering::AcqRel) || !self.armed.load(Ordering::Acquire) {
            return false;
        }
        let guard = self.target();
        match guard.as_ref() {
            None => false,
            Some(Target::Polled) => {
                self.raised.store(true, Ordering::Release);
                true
            }
            Some(Target::Signal { base, len, site }) => {
                let t = (*base, *len);
                let (count, size) = (
                    site.signal_buff + 4 * SignalSite::SIGINT,
                    site.signal_buff + SignalSite::SIZE,
                );
                let Some(ec) = read_word(t, site.current_ec).filter(|&ec| ec != 0) else {
                    return false;
                };
                let flag = ec.wrapping_add(SignalSite::INTERRUPT_FLAG);
                match (read_word(t, count), read_word(t, size), read_word(t, flag)) {
                    (Some(c), Some(n), Some(f)) => {
                        write_word(t, count, c.wrapping_add(1))
                            && write_word(t, size, n.wrapping_add(1))
                            && write_word(t, flag, f | SignalSite::TRAP)
                    }
                    _ => false,
                }
            }
            Some(Target::Memory { base, len, addrs }) => {
                let t = (*base, *len);
                let breaker = read_word(t, addrs.eval_breaker);
                write_word(t, addrs.async_exc, addrs.exception)
                    && breaker
                        .is_some_and(|b| write_word(t, addrs.eval_breaker, b | ASYNC_EXCEPTION_BIT))
            }
        }
    }

    /// Whether an interrupt was written into the guest and not raised yet (the epoch callback
    /// delivered it just before the guest blocked): a blocking call should return at once so
    /// the guest raises it. Only on the store's thread while the guest is not executing.
    pub fn in_flight(&self) -> bool {
        match self.target().as_ref() {
            None => false,
            Some(Target::Polled) => self.raised.load(Ordering::Acquire),
            Some(Target::Signal { base, len, site }) => {
                read_word((*base, *len), site.signal_buff + SignalSite::SIZE)
                    .is_some_and(|n| n != 0)
            }
            Some(Target::Memory { base, len, addrs }) => {
                read_word((*base, *len), addrs.async_exc) == Some(addrs.exception)
            }
        }
    }

    /// Clears an interrupt written but not yet raised.
    fn withdraw(&self) {
        match self.target().as_ref() {
            None => {}
            Some(Target::Polled) => self.raised.store(false, Ordering::Release),
            Some(Target::Signal { base, len, site }) => {
                let t = (*base, *len);
                if read_word(t, site.signal_buff + SignalSite::SIZE).is_some_and(|n| n != 0) {
                    write_word(t, site.signal_buff + 4 * SignalSite::SIGINT, 0);
                    write_word(t, site.signal_buff + SignalSite::SIZE, 0);
                    if let Some(ec) = read_word(t, site.current_ec).filter(|&ec| ec != 0) {
                        let flag = ec.wrapping_add(SignalSite::INTERRUPT_FLAG);
                        if let Some(f) = read_word(t, flag) {
                            write_word(t, flag, f & !SignalSite::TRAP);
                        }
                    }
                }
            }
            Some(Target::Memory { base, len, addrs }) => {
                let t = (*base, *len);
                if read_word(t, addrs.async_exc) == Some(addrs.exception) {
                    write_word(t, addrs.async_exc, 0);
                }
            }
        }
    }
}

/// A guest memory: its base and length.
type Words = (NonNull<u8>, usize);

fn in_bounds((_, len): Words, address: u32) -> bool {
    (address as usize)
        .checked_add(4)
        .is_some_and(|end| end <= len)
        && address.is_multiple_of(4)
}

#[allow(unsafe_code)]
fn read_word(t: Words, address: u32) -> Option<u32> {
    if !in_bounds(t, address) {
        return None;
    }
    // SAFETY: in bounds and aligned, in a memory the store keeps alive while attached; the
    // guest is not executing (module docs).
    Some(unsafe {
        t.0.as_ptr()
            .add(address as usize)
            .cast::<u32>()
            .read_volatile()
    })
}

#[allow(unsafe_code)]
fn write_word(t: Words, address: u32, value: u32) -> bool {
    if !in_bounds(t, address) {
        return false;
    }
    // SAFETY: as in `read_word`.
    unsafe {
        t.0.as_ptr()
            .add(address as usize)
            .cast::<u32>()
            .write_volatile(value)
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_memory(f: impl FnOnce(&Interrupter, &[u32; 8])) {
        let words = Box::new([0u32; 8]);
        let base = NonNull::from(&*words).cast::<u8>();
        let i = Interrupter::armed();
        // SAFETY: `words` is 32 bytes, lives past `detach` below, and only this thread writes.
        #[allow(unsafe_code)]
        unsafe {
            i.attach(
                base,
                32,
                InterruptAddrs {
                    eval_breaker: 4,
                    async_exc: 8,
                    exception: 0xABCD,
                },
            )
        };
        f(&i, &words);
        i.detach();
    }

    #[test]
    fn delivery_sets_the_exception_and_the_breaker_bit_once() {
        with_memory(|i, words| {
            assert!(!i.deliver(), "nothing requested");
            assert!(i.request());
            assert!(i.deliver());
            assert_eq!(words[2], 0xABCD);
            assert_eq!(words[1], ASYNC_EXCEPTION_BIT);
            assert!(!i.deliver(), "delivered once per request");
        });
    }

    #[test]
    fn a_disarmed_interrupter_refuses_and_withdraws() {
        with_memory(|i, words| {
            assert!(i.request());
            assert!(i.deliver());
            i.set_armed(false);
            assert_eq!(words[2], 0, "an unraised interrupt is withdrawn");
            assert!(!i.request(), "no cell runs");
        });
    }

    #[test]
    fn without_a_site_nothing_can_be_interrupted() {
        let i = Interrupter::armed();
        assert!(!i.request());
    }
}
