//! The set of plugins a gateway build registers.

use crate::credentials::CredentialKind;
use crate::PluginFactory;

/// Every plugin a gateway build knows: the factories by name and the credential kinds they
/// declare. Built once by the gateway (`plugin::registry()`) and handed to configuration loading,
/// which knows no plugin by name.
pub struct Registry {
    factories: Vec<Box<dyn PluginFactory>>,
    kinds: Vec<&'static CredentialKind>,
}

impl Registry {
    pub fn new(factories: Vec<Box<dyn PluginFactory>>) -> Registry {
        let kinds = factories
            .iter()
            .flat_map(|f| f.credential_kinds().iter())
            .collect();
        Registry { factories, kinds }
    }

    /// The factory of the plugin called `name`.
    pub fn factory(&self, name: &str) -> Option<&dyn PluginFactory> {
        self.factories
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.as_ref())
    }

    /// Every plugin name, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.iter().map(|f| f.name())
    }

    /// The credential kind stored in `collection` (`keyauth_credentials`, …), if a plugin owns it.
    pub fn credential_kind(&self, collection: &str) -> Option<&'static CredentialKind> {
        self.kinds
            .iter()
            .copied()
            .find(|k| k.collection == collection)
    }

    /// Every declared credential kind.
    pub fn credential_kinds(&self) -> &[&'static CredentialKind] {
        &self.kinds
    }
}
