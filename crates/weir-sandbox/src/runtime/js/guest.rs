//! The QuickJS guest's embedding API as the host calls it: evaluations, the job queue, and the
//! few value operations the host needs (strings and numbers in and out, one global property).
//! Values live in the guest as handles (`i32`, 0 is none) that the host frees; strings cross
//! through the guest's allocator and its one-slot result buffer.

use crate::store::GuestState;
use wasmtime::{
    AsContextMut, Caller, Extern, Func, Instance, Memory, Store, TypedFunc, WasmParams, WasmResults,
};

/// A guest call's status: the value (or the exception) is in the out-slot.
const OK: i32 = 0;
/// A JavaScript exception is pending (`last_exception` takes it).
const JS_ERROR: i32 = 1;

/// A value in the guest: a handle the host owns until it frees it.
pub(super) type Handle = i32;

/// What an evaluation gave: its value, or the exception it threw.
pub(super) enum Evaluated {
    Value(Handle),
    Thrown(Handle),
}

/// The guest's exports, looked up once per instance (or per host call, from its caller).
#[derive(Clone)]
pub(super) struct Exports {
    pub memory: Memory,
    alloc: TypedFunc<i32, i32>,
    free: TypedFunc<(i32, i32), ()>,
    eval_code: TypedFunc<(i32, i32, i32), i32>,
    eval_module: TypedFunc<(i32, i32, i32, i32, i32), i32>,
    last_exception: TypedFunc<i32, i32>,
    jobs: TypedFunc<(), i32>,
    global: TypedFunc<(), i32>,
    new_function: TypedFunc<(i32, i32), i32>,
    set_prop: TypedFunc<(i32, i32, i32, i32), i32>,
    free_value: TypedFunc<i32, ()>,
    type_of: TypedFunc<i32, i32>,
    get_string: TypedFunc<i32, i32>,
    get_number: TypedFunc<(i32, i32), i32>,
    last_ptr: TypedFunc<(), i32>,
    last_len: TypedFunc<(), i32>,
    result_free: TypedFunc<(), ()>,
    new_string: TypedFunc<(i32, i32), i32>,
    new_undefined: TypedFunc<(), i32>,
    new_null: TypedFunc<(), i32>,
    promise_state: TypedFunc<(i32, i32), i32>,
    promise_result: TypedFunc<(i32, i32), i32>,
}

fn typed<P: WasmParams, R: WasmResults>(
    store: impl AsContextMut,
    get: &mut impl FnMut(&str) -> Option<Func>,
    name: &str,
) -> wasmtime::Result<TypedFunc<P, R>> {
    let func =
        get(name).ok_or_else(|| wasmtime::format_err!("the QuickJS guest exports no {name}"))?;
    func.typed(store)
}

impl Exports {
    fn lookup(
        mut store: impl AsContextMut,
        memory: Option<Memory>,
        mut get: impl FnMut(&str) -> Option<Func>,
    ) -> wasmtime::Result<Self> {
        let s = &mut store;
        let g = &mut get;
        Ok(Exports {
            memory: memory
                .ok_or_else(|| wasmtime::format_err!("the QuickJS guest exports no memory"))?,
            alloc: typed(&mut *s, g, "qjs_alloc")?,
            free: typed(&mut *s, g, "qjs_free")?,
            eval_code: typed(&mut *s, g, "eval_code")?,
            eval_module: typed(&mut *s, g, "eval_module_async")?,
            last_exception: typed(&mut *s, g, "last_exception")?,
            jobs: typed(&mut *s, g, "execute_pending_jobs")?,
            global: typed(&mut *s, g, "global_object")?,
            new_function: typed(&mut *s, g, "new_function")?,
            set_prop: typed(&mut *s, g, "set_prop")?,
            free_value: typed(&mut *s, g, "free_value")?,
            type_of: typed(&mut *s, g, "type_of")?,
            get_string: typed(&mut *s, g, "get_string")?,
            get_number: typed(&mut *s, g, "get_number")?,
            last_ptr: typed(&mut *s, g, "qjs_last_ptr")?,
            last_len: typed(&mut *s, g, "qjs_last_len")?,
            result_free: typed(&mut *s, g, "qjs_result_free")?,
            new_string: typed(&mut *s, g, "new_string")?,
            new_undefined: typed(&mut *s, g, "new_undefined")?,
            new_null: typed(&mut *s, g, "new_null")?,
            promise_state: typed(&mut *s, g, "promise_state")?,
            promise_result: typed(&mut *s, g, "promise_result")?,
        })
    }

    /// The exports of `instance`.
    pub fn of(store: &mut Store<GuestState>, instance: Instance) -> wasmtime::Result<Self> {
        let memory = instance.get_memory(&mut *store, "memory");
        let funcs: Vec<(String, Func)> = instance
            .exports(&mut *store)
            .filter_map(|e| {
                let name = e.name().to_owned();
                e.into_func().map(|f| (name, f))
            })
            .collect();
        Self::lookup(store, memory, |name| {
            funcs.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
        })
    }

    /// The exports of the instance calling a host function.
    pub fn of_caller(caller: &mut Caller<'_, GuestState>) -> wasmtime::Result<Self> {
        let memory = match caller.get_export("memory") {
            Some(Extern::Memory(m)) => Some(m),
            _ => None,
        };
        let funcs: Vec<(&str, Func)> = FUNCS
            .iter()
            .filter_map(|name| {
                caller
                    .get_export(name)
                    .and_then(Extern::into_func)
                    .map(|f| (*name, f))
            })
            .collect();
        Self::lookup(caller, memory, |name| {
            funcs.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
        })
    }

    /// Copies `bytes` into a fresh guest allocation: its address (free with [`Self::free`]).
    async fn put(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        bytes: &[u8],
    ) -> wasmtime::Result<i32> {
        let len = i32::try_from(bytes.len().max(1))
            .map_err(|_| wasmtime::format_err!("{} bytes do not fit the guest", bytes.len()))?;
        let at = self.alloc.call_async(&mut store, len).await?;
        if at == 0 {
            return Err(wasmtime::format_err!(
                "the JavaScript heap is out of memory"
            ));
        }
        self.memory.write(&mut store, at as u32 as usize, bytes)?;
        Ok(at)
    }

    async fn release(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        at: i32,
        len: usize,
    ) -> wasmtime::Result<()> {
        self.free
            .call_async(&mut store, (at, len.max(1) as i32))
            .await
    }

    /// An out-slot of 8 bytes.
    async fn slot(&self, store: impl AsContextMut<Data = GuestState>) -> wasmtime::Result<i32> {
        self.put(store, &[0; 8]).await
    }

    fn read_slot<const N: usize>(
        &self,
        store: impl AsContextMut<Data = GuestState>,
        at: i32,
    ) -> wasmtime::Result<[u8; N]> {
        let mut bytes = [0; N];
        self.memory.read(&store, at as u32 as usize, &mut bytes)?;
        Ok(bytes)
    }

    /// Evaluates `source` as a global script (its top-level `let`/`const` stay for later
    /// evaluations), or as a module named `module` (strict, `import`, top-level `await`): its
    /// value is then the promise of the module's evaluation.
    pub async fn eval(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        source: &str,
        module: Option<&str>,
    ) -> wasmtime::Result<Evaluated> {
        let code = self.put(&mut store, source.as_bytes()).await?;
        let out = self.slot(&mut store).await?;
        let len = source.len() as i32;
        let status = match module {
            None => {
                self.eval_code
                    .call_async(&mut store, (code, len, out))
                    .await?
            }
            Some(name) => {
                let at = self.put(&mut store, name.as_bytes()).await?;
                let s = self
                    .eval_module
                    .call_async(&mut store, (code, len, at, name.len() as i32, out))
                    .await?;
                self.release(&mut store, at, name.len()).await?;
                s
            }
        };
        let handle = i32::from_le_bytes(self.read_slot::<4>(&mut store, out)?);
        self.release(&mut store, code, source.len()).await?;
        match status {
            OK => {
                self.release(&mut store, out, 8).await?;
                Ok(Evaluated::Value(handle))
            }
            JS_ERROR => {
                let status = self.last_exception.call_async(&mut store, out).await?;
                let thrown = i32::from_le_bytes(self.read_slot::<4>(&mut store, out)?);
                self.release(&mut store, out, 8).await?;
                if status != OK {
                    return Err(wasmtime::format_err!(
                        "the guest lost an exception (status {status})"
                    ));
                }
                Ok(Evaluated::Thrown(thrown))
            }
            other => Err(wasmtime::format_err!(
                "the guest could not evaluate (status {other})"
            )),
        }
    }

    /// Runs the pending promise jobs; how many ran (negative: a job failed uncatchably).
    pub async fn run_jobs(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
    ) -> wasmtime::Result<i32> {
        self.jobs.call_async(&mut store, ()).await
    }

    pub async fn free_value(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
    ) -> wasmtime::Result<()> {
        if h != 0 {
            self.free_value.call_async(&mut store, h).await?;
        }
        Ok(())
    }

    /// The result buffer's bytes after a call that filled it.
    async fn take_result(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        max: usize,
    ) -> wasmtime::Result<Vec<u8>> {
        let len = self.last_len.call_async(&mut store, ()).await? as u32 as usize;
        let at = self.last_ptr.call_async(&mut store, ()).await? as u32 as usize;
        let mut bytes = vec![0; len.min(max)];
        self.memory.read(&store, at, &mut bytes)?;
        self.result_free.call_async(&mut store, ()).await?;
        Ok(bytes)
    }

    /// The type of a value, as `typeof` names it (`array` for arrays).
    pub async fn type_of(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
    ) -> wasmtime::Result<String> {
        if self.type_of.call_async(&mut store, h).await? != OK {
            return Ok("undefined".into());
        }
        Ok(String::from_utf8_lossy(&self.take_result(&mut store, 64).await?).into_owned())
    }

    /// A string value's UTF-8 bytes, at most `max` of them (`None` for another type).
    pub async fn string(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
        max: usize,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        if self.type_of(&mut store, h).await? != "string" {
            return Ok(None);
        }
        if self.get_string.call_async(&mut store, h).await? != OK {
            return Ok(None);
        }
        Ok(Some(self.take_result(&mut store, max).await?))
    }

    /// A string value's UTF-8 bytes where they lie in the guest's result buffer, `(address,
    /// length)`: the caller reads or writes from there, then frees the buffer
    /// ([`Self::release_result`]). `None` for another type.
    pub async fn string_in_place(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
    ) -> wasmtime::Result<Option<(usize, usize)>> {
        if self.type_of(&mut store, h).await? != "string" {
            return Ok(None);
        }
        if self.get_string.call_async(&mut store, h).await? != OK {
            return Ok(None);
        }
        let len = self.last_len.call_async(&mut store, ()).await? as u32 as usize;
        let at = self.last_ptr.call_async(&mut store, ()).await? as u32 as usize;
        Ok(Some((at, len)))
    }

    /// Frees the result buffer.
    pub async fn release_result(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
    ) -> wasmtime::Result<()> {
        self.result_free.call_async(&mut store, ()).await
    }

    /// A fresh guest allocation of `len` bytes.
    pub async fn alloc(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        len: usize,
    ) -> wasmtime::Result<i32> {
        let at = self.alloc.call_async(&mut store, len as i32).await?;
        match at {
            0 => Err(wasmtime::format_err!(
                "the JavaScript heap is out of memory"
            )),
            at => Ok(at),
        }
    }

    /// Frees an allocation of [`Self::alloc`].
    pub async fn free(
        &self,
        store: impl AsContextMut<Data = GuestState>,
        at: i32,
        len: usize,
    ) -> wasmtime::Result<()> {
        self.release(store, at, len).await
    }

    /// A number value (`None` for another type).
    pub async fn number(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
    ) -> wasmtime::Result<Option<f64>> {
        if self.type_of(&mut store, h).await? != "number" {
            return Ok(None);
        }
        let out = self.slot(&mut store).await?;
        let status = self.get_number.call_async(&mut store, (h, out)).await?;
        let bytes = self.read_slot::<8>(&mut store, out)?;
        self.release(&mut store, out, 8).await?;
        Ok((status == OK).then(|| f64::from_le_bytes(bytes)))
    }

    pub async fn new_string(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        text: &[u8],
    ) -> wasmtime::Result<Handle> {
        let at = self.put(&mut store, text).await?;
        let h = self
            .new_string
            .call_async(&mut store, (at, text.len() as i32))
            .await?;
        self.release(&mut store, at, text.len()).await?;
        Ok(h)
    }

    pub async fn undefined(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
    ) -> wasmtime::Result<Handle> {
        self.new_undefined.call_async(&mut store, ()).await
    }

    pub async fn null(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
    ) -> wasmtime::Result<Handle> {
        self.new_null.call_async(&mut store, ()).await
    }

    /// What a promise was rejected with (a new handle), `None` when it is not a rejected
    /// promise.
    pub async fn rejection(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        h: Handle,
    ) -> wasmtime::Result<Option<Handle>> {
        const REJECTED: i32 = 2;
        let out = self.slot(&mut store).await?;
        let status = self.promise_state.call_async(&mut store, (h, out)).await?;
        let state = i32::from_le_bytes(self.read_slot::<4>(&mut store, out)?);
        if status != OK || state != REJECTED {
            self.release(&mut store, out, 8).await?;
            return Ok(None);
        }
        // Its status says the promise was rejected; the reason is in the out-slot all the same.
        self.promise_result.call_async(&mut store, (h, out)).await?;
        let reason = i32::from_le_bytes(self.read_slot::<4>(&mut store, out)?);
        self.release(&mut store, out, 8).await?;
        Ok(Some(reason))
    }

    /// Sets `globalThis[name]` to `value` (not taken: the caller still frees it).
    pub async fn set_global(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        name: &str,
        value: Handle,
    ) -> wasmtime::Result<()> {
        let global = self.global.call_async(&mut store, ()).await?;
        let at = self.put(&mut store, name.as_bytes()).await?;
        let status = self
            .set_prop
            .call_async(&mut store, (global, at, name.len() as i32, value))
            .await?;
        self.release(&mut store, at, name.len()).await?;
        self.free_value(&mut store, global).await?;
        match status {
            OK => Ok(()),
            s => Err(wasmtime::format_err!("cannot set {name} (status {s})")),
        }
    }

    /// Installs the host function `name` (its calls reach `env.host_call` with that name) as a
    /// global.
    pub async fn install_host_function(
        &self,
        mut store: impl AsContextMut<Data = GuestState>,
        name: &str,
    ) -> wasmtime::Result<()> {
        let at = self.put(&mut store, name.as_bytes()).await?;
        let f = self
            .new_function
            .call_async(&mut store, (at, name.len() as i32))
            .await?;
        self.release(&mut store, at, name.len()).await?;
        self.set_global(&mut store, name, f).await?;
        self.free_value(&mut store, f).await
    }
}

/// The functions [`Exports`] holds, as a host call looks them up.
const FUNCS: &[&str] = &[
    "qjs_alloc",
    "qjs_free",
    "eval_code",
    "eval_module_async",
    "last_exception",
    "execute_pending_jobs",
    "global_object",
    "new_function",
    "set_prop",
    "free_value",
    "type_of",
    "get_string",
    "get_number",
    "qjs_last_ptr",
    "qjs_last_len",
    "qjs_result_free",
    "new_string",
    "new_undefined",
    "new_null",
    "promise_state",
    "promise_result",
];
