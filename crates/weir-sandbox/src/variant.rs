//! One runtime on one engine: the engine (with or without fuel metering), the runtime's guest
//! compiled and linked on it, its epoch ticker and its warm pool.

use crate::engine::{self, EngineSettings, EpochTicker, Instantiator};
use crate::runtime::Runtime;
use crate::warm::{self, WarmPool};
use std::sync::Arc;

/// One runtime compiled for one engine, ready to instantiate.
pub(crate) struct EngineVariant {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) instantiator: Instantiator,
    pub(crate) warm: WarmPool,
    _ticker: EpochTicker,
}

impl EngineVariant {
    /// Builds the engine, loads (or compiles and caches) the runtime's guest, and links it.
    /// Blocking: takes ~10 ms from the cache, 10–20 s the first time.
    pub fn load(
        settings: &EngineSettings,
        runtime: Arc<dyn Runtime>,
        fuel: bool,
    ) -> anyhow::Result<Self> {
        let warm_size = engine::warm_instances(settings, fuel);
        let extra = warm::slots(warm_size, settings.warm_fillers);
        let engine = engine::engine(settings, runtime.footprint(), fuel, extra)?;
        let guest = runtime.load(&engine, &settings.cache_dir)?;
        let ticker = EpochTicker::start(engine.clone(), settings.epoch_tick)?;
        let instantiator = Instantiator {
            engine,
            guest,
            fuel,
        };
        let warm = WarmPool::start(instantiator.clone(), warm_size, settings.warm_fillers)?;
        Ok(EngineVariant {
            runtime,
            instantiator,
            warm,
            _ticker: ticker,
        })
    }

    pub(crate) fn metered(&self) -> bool {
        self.instantiator.fuel
    }
}
