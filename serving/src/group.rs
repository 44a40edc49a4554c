//! A group in memory: one value per dimension of its view (`None`: absent).
//!
//! Snapshot day files and speed slices each keep a dictionary of the groups
//! they hold and refer to them by index; the values are `Arc<str>`, so a
//! projection (`group_by`) or an answer shares them instead of copying.

use std::collections::HashMap;
use std::sync::Arc;

/// One value per dimension of the view.
pub(crate) type Group = Box<[Option<Arc<str>>]>;

/// Interns dimension values and groups: equal values share one `Arc<str>`,
/// equal groups one index.
#[derive(Debug, Default)]
pub(crate) struct GroupDict {
    values: HashMap<Arc<str>, u32>,
    texts: Vec<Arc<str>>,
    ids: HashMap<Box<[u32]>, u32>,
    groups: Vec<Group>,
    /// Scratch: the value ids of the group being looked up.
    key: Vec<u32>,
}

/// The id of an absent value in a group's key.
const ABSENT: u32 = u32::MAX;

impl GroupDict {
    /// The index of the group of `values` (one per dimension), added if new.
    pub(crate) fn intern<'a>(&mut self, values: impl IntoIterator<Item = Option<&'a str>>) -> u32 {
        self.key.clear();
        for v in values {
            let id = match v {
                None => ABSENT,
                Some(v) => match self.values.get(v) {
                    Some(&id) => id,
                    None => {
                        let id = self.texts.len() as u32;
                        let text: Arc<str> = Arc::from(v);
                        self.values.insert(text.clone(), id);
                        self.texts.push(text);
                        id
                    }
                },
            };
            self.key.push(id);
        }
        if let Some(&g) = self.ids.get(self.key.as_slice()) {
            return g;
        }
        let g = self.groups.len() as u32;
        let group: Group = self
            .key
            .iter()
            .map(|&id| (id != ABSENT).then(|| self.texts[id as usize].clone()))
            .collect();
        self.groups.push(group);
        self.ids.insert(self.key.clone().into_boxed_slice(), g);
        g
    }

    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The groups, giving up the lookup tables.
    pub(crate) fn into_groups(self) -> Vec<Group> {
        self.groups
    }

    /// Heap bytes held (roughly): what a memory budget counts.
    pub(crate) fn heap_bytes(&self) -> usize {
        let texts: usize = self.texts.iter().map(|t| t.len() + 48).sum();
        let per_group = self.key.capacity().max(1) * 12 + 64;
        texts + self.groups.len() * per_group
    }
}
