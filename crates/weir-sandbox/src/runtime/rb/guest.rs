//! The CRuby guest's exports as the host calls them (ruby.wasm's `rb-abi-guest` interface,
//! lowered by hand): an evaluation under `rb_protect` in the top-level binding, a Ruby string's
//! bytes, a lent value's release. Strings go in through the guest's `cabi_realloc`; values come
//! back as the `VALUE`s themselves (the host's handle table is the identity, `host`).

use crate::store::GuestState;
use wasmtime::{AsContextMut, Func, Instance, Memory, Store, TypedFunc};

/// `rb_protect`'s state when nothing was raised.
pub(super) const STATE_OK: i32 = 0;

/// An export of the guest whose name starts `prefix` (ruby.wasm names its exports with their
/// WIT signature: `rb-eval-string-protect: func(...)`).
pub(super) fn export(
    store: &mut impl AsContextMut,
    instance: &Instance,
    prefix: &str,
) -> Option<Func> {
    let names: Vec<String> = instance
        .exports(&mut *store)
        .map(|e| e.name().to_owned())
        .collect();
    let name = names.iter().find(|n| {
        *n == prefix
            || n.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(':'))
    })?;
    instance.get_func(&mut *store, name)
}

/// The exports a run uses.
pub(super) struct Exports {
    pub memory: Memory,
    realloc: TypedFunc<(i32, i32, i32, i32), i32>,
    eval: TypedFunc<(i32, i32), i32>,
    rstring: TypedFunc<i32, i32>,
    post_rstring: TypedFunc<i32, ()>,
    drop_value: TypedFunc<i32, ()>,
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<GuestState>,
    instance: &Instance,
    prefix: &str,
) -> wasmtime::Result<TypedFunc<P, R>> {
    export(store, instance, prefix)
        .ok_or_else(|| wasmtime::format_err!("the Ruby guest exports no {prefix}"))?
        .typed(&*store)
}

impl Exports {
    pub fn of(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<Self> {
        Ok(Exports {
            memory: instance
                .get_memory(&mut *store, "memory")
                .ok_or_else(|| wasmtime::format_err!("the Ruby guest exports no memory"))?,
            realloc: typed(store, instance, "cabi_realloc")?,
            eval: typed(store, instance, "rb-eval-string-protect")?,
            rstring: typed(store, instance, "rstring-ptr")?,
            post_rstring: typed(store, instance, "cabi_post_rstring-ptr")?,
            drop_value: typed(store, instance, "canonical_abi_drop_rb-abi-value")?,
        })
    }

    /// Evaluates `source` in the top-level binding: the value (lent: release it with
    /// [`Self::release`] when the state is [`STATE_OK`]) and `rb_protect`'s state. `buffer` is
    /// the guest allocation the source is copied into, grown when it is too small: the guest
    /// never frees what it is given, so one buffer serves a whole run.
    pub async fn eval(
        &self,
        store: &mut Store<GuestState>,
        buffer: &std::sync::Mutex<(i32, usize)>,
        source: &str,
    ) -> wasmtime::Result<(i32, i32)> {
        let (mut at, mut capacity) = *buffer.lock().unwrap_or_else(|p| p.into_inner());
        if at == 0 || capacity < source.len() {
            let want = source.len().max(4096).next_power_of_two();
            let len =
                i32::try_from(want).map_err(|_| wasmtime::format_err!("{want} bytes of source"))?;
            at = self
                .realloc
                .call_async(&mut *store, (at, capacity as i32, 1, len))
                .await?;
            if at == 0 {
                return Err(wasmtime::format_err!("the Ruby heap is out of memory"));
            }
            capacity = want;
            *buffer.lock().unwrap_or_else(|p| p.into_inner()) = (at, capacity);
        }
        self.memory
            .write(&mut *store, at as u32 as usize, source.as_bytes())?;
        let ret = self
            .eval
            .call_async(&mut *store, (at, source.len() as i32))
            .await?;
        let mut pair = [0u8; 8];
        self.memory.read(&*store, ret as u32 as usize, &mut pair)?;
        let value = i32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
        let state = i32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
        Ok((value, state))
    }

    /// The bytes of the Ruby String `value`, at most `max`.
    pub async fn string(
        &self,
        store: &mut Store<GuestState>,
        value: i32,
        max: usize,
    ) -> wasmtime::Result<Vec<u8>> {
        let ret = self.rstring.call_async(&mut *store, value).await?;
        let mut pair = [0u8; 8];
        self.memory.read(&*store, ret as u32 as usize, &mut pair)?;
        let at = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
        let len = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]) as usize;
        let mut bytes = vec![0u8; len.min(max)];
        self.memory.read(&*store, at, &mut bytes)?;
        self.post_rstring.call_async(&mut *store, ret).await?;
        Ok(bytes)
    }

    /// Gives a lent value back to the guest's garbage collector.
    pub async fn release(&self, store: &mut Store<GuestState>, value: i32) -> wasmtime::Result<()> {
        self.drop_value.call_async(&mut *store, value).await
    }
}

/// A Ruby `VALUE` that is an Integer small enough to be immediate (`2n + 1`), as an `i64`.
pub(super) fn fixnum(value: i32) -> Option<i64> {
    (value & 1 == 1).then_some(i64::from(value >> 1))
}
