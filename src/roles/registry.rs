//! Where roles come from: the ones compiled in, by name, and external roles
//! made from a topology's `roles.NAME.exec`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::Topology;

use super::external::ExternalRole;
use super::http::HttpRole;
use super::Role;

type Factory = Arc<dyn Fn() -> Arc<dyn Role> + Send + Sync>;

/// Makes the roles a `RoleSet` runs. A name registered here wins; any other
/// name the topology defines with `exec:` becomes an `ExternalRole`.
#[derive(Clone)]
pub struct Registry {
    compiled: BTreeMap<String, Factory>,
}

impl Registry {
    /// No compiled-in roles: only external ones.
    pub fn empty() -> Registry {
        Registry {
            compiled: BTreeMap::new(),
        }
    }

    /// The built-in roles (`config::BUILTIN_ROLES`): `http` serves the
    /// node's name and UUID; `router` and `storage` have no behaviour yet.
    pub fn builtin() -> Registry {
        Registry::empty()
            .with("http", || Arc::new(HttpRole::new()))
            .with("router", || Arc::new(Marker))
            .with("storage", || Arc::new(Marker))
    }

    /// Registers (or replaces) a compiled-in role. The topology must still
    /// accept the name: only `config::BUILTIN_ROLES` pass its checks
    /// without `exec`.
    pub fn with(
        mut self,
        name: impl Into<String>,
        make: impl Fn() -> Arc<dyn Role> + Send + Sync + 'static,
    ) -> Registry {
        self.compiled.insert(name.into(), Arc::new(make));
        self
    }

    /// A fresh instance of `name` as `topology` defines it, or none.
    pub(crate) fn create(&self, name: &str, topology: &Topology) -> Option<Arc<dyn Role>> {
        if let Some(make) = self.compiled.get(name) {
            return Some(make());
        }
        topology
            .roles
            .get(name)
            .and_then(|spec| spec.exec.as_ref())
            .map(|_| Arc::new(ExternalRole::new()) as Arc<dyn Role>)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("compiled", &self.compiled.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A role with no behaviour: it names what a replica set is for and takes
/// part in dependency order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marker;

impl Role for Marker {}
