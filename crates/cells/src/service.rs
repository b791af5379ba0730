//! The Cells services whose store is a Bolt file: their files, the MongoDB
//! collections their later-v4 DAOs use, and the indexes those DAOs declare.
//!
//! Collection names: the later v4 DAO code (the code `cells admin config
//! db add` goes with) names every collection `<prefix>_<name>` through
//! `m.Collection(name)`; earlier v4 code used bare names for activity,
//! chat and versions (reference 1c). [`Prefixes`] chooses; the default is
//! the later code.
//!
//! Indexes: Cells' `Model.Init` creates a collection's indexes only when it
//! creates the collection itself, so whoever creates the collections (Ferry)
//! must create them. None of them is unique or TTL, so they are all made
//! before the first document. Cells builds compound keys from a Go map,
//! whose order is random; the order here is the one its source lists.

use mongodb::bson::{doc, Document};

/// A Cells service whose store is a Bolt file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Docstore,
    Activity,
    Chat,
    Mailer,
    Versions,
    Jobs,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Docstore,
        Service::Activity,
        Service::Chat,
        Service::Mailer,
        Service::Versions,
        Service::Jobs,
    ];

    /// The service name Cells registers (its data directory's name).
    pub fn name(self) -> &'static str {
        match self {
            Service::Docstore => "pydio.grpc.docstore",
            Service::Activity => "pydio.grpc.activity",
            Service::Chat => "pydio.grpc.chat",
            Service::Mailer => "pydio.grpc.mailer",
            Service::Versions => "pydio.grpc.versions",
            Service::Jobs => "pydio.grpc.jobs",
        }
    }

    /// The Bolt file in the service's data directory.
    pub fn bolt_file(self) -> &'static str {
        match self {
            Service::Docstore => "docstore.db",
            Service::Activity => "activities.db",
            Service::Chat => "chat.db",
            Service::Mailer => "queue.db",
            Service::Versions => "versions.db",
            Service::Jobs => "jobs.db",
        }
    }

    /// The storage prefix Cells gives the service's Mongo DAO.
    fn prefix(self) -> &'static str {
        match self {
            Service::Docstore => "docstore",
            Service::Activity => "activity",
            Service::Chat => "chat",
            Service::Mailer => "mailer",
            Service::Versions => "versions",
            Service::Jobs => "jobs",
        }
    }

    /// Whether earlier v4 code already prefixed this service's collections
    /// (docstore, mailer and jobs did; activity, chat and versions called
    /// the database directly).
    fn early_prefixed(self) -> bool {
        matches!(self, Service::Docstore | Service::Mailer | Service::Jobs)
    }

    /// The collections' base names and each one's indexes, as Cells' models
    /// declare them.
    fn tables(self) -> Vec<(&'static str, Vec<Document>)> {
        match self {
            Service::Docstore => vec![(
                "documents",
                vec![doc! {"store_id": 1}, doc! {"store_id": 1, "doc_id": 1}],
            )],
            Service::Activity => vec![
                (
                    "activities",
                    vec![
                        doc! {"ac_id": 1},
                        doc! {"ts": -1},
                        doc! {"owner_type": 1, "owner_id": 1, "box_name": 1},
                    ],
                ),
                // `objectype` is Cells' own spelling (it indexes a field that
                // does not exist; kept, so the target matches what Cells makes).
                (
                    "subscriptions",
                    vec![
                        doc! {"objectype": 1, "objectid": 1},
                        doc! {"objectype": 1, "objectid": 1, "userid": 1},
                    ],
                ),
                ("markers", vec![doc! {"box_name": 1, "user_id": 1}]),
            ],
            Service::Chat => vec![
                (
                    "rooms",
                    vec![doc! {"uuid": 1}, doc! {"type": 1, "roomtypeobject": 1}],
                ),
                (
                    "messages",
                    vec![
                        doc! {"roomuuid": 1},
                        doc! {"author": 1},
                        doc! {"timestamp": -1},
                    ],
                ),
            ],
            Service::Mailer => vec![("mailqueues", vec![doc! {"ts": 1}])],
            Service::Versions => vec![(
                "versions",
                vec![
                    doc! {"node_uuid": 1},
                    doc! {"node_uuid": 1, "version_id": 1},
                    doc! {"ts": -1},
                ],
            )],
            Service::Jobs => vec![
                (
                    "jobs",
                    vec![
                        doc! {"id": 1},
                        doc! {"owner": 1, "has_events": 1, "has_schedule": 1},
                    ],
                ),
                (
                    "tasks",
                    vec![doc! {"id": 1, "job_id": 1, "status": 1, "ts": -1}],
                ),
            ],
        }
    }

    /// The MongoDB collections the service's documents go to.
    pub fn collections(self, opts: &MapOptions) -> Vec<String> {
        self.tables()
            .into_iter()
            .map(|(n, _)| opts.collection(self, n))
            .collect()
    }

    /// Each collection with its indexes as `createIndexes` takes them
    /// (`key` and the name the Go driver generates, `field_dir_…`).
    pub fn indexes(self, opts: &MapOptions) -> Vec<(String, Vec<Document>)> {
        self.tables()
            .into_iter()
            .map(|(n, keys)| {
                let specs = keys
                    .into_iter()
                    .map(|key| {
                        let name = key
                            .iter()
                            .map(|(k, v)| format!("{k}_{v}"))
                            .collect::<Vec<_>>()
                            .join("_");
                        doc! {"key": key, "name": name}
                    })
                    .collect();
                (opts.collection(self, n), specs)
            })
            .collect()
    }
}

/// Which Cells v4 code's collection names to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefixes {
    /// Later v4 (the default): `<prefix>_<name>` for every service.
    #[default]
    V4,
    /// Earlier v4: bare names for activity, chat and versions.
    V4Early,
    /// Bare names for every service.
    None,
}

impl Prefixes {
    /// The option's spelling, as parsed.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefixes::V4 => "v4",
            Prefixes::V4Early => "v4-early",
            Prefixes::None => "none",
        }
    }
}

impl std::str::FromStr for Prefixes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v4" | "all" => Ok(Prefixes::V4),
            "v4-early" => Ok(Prefixes::V4Early),
            "none" => Ok(Prefixes::None),
            _ => Err(format!(
                "unknown prefixes `{s}`: use v4 (later Cells v4: every collection prefixed), v4-early (bare activity, chat and versions collections) or none"
            )),
        }
    }
}

/// How Bolt entries are mapped.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapOptions {
    pub prefixes: Prefixes,
}

impl MapOptions {
    pub fn collection(&self, service: Service, name: &str) -> String {
        let prefixed = match self.prefixes {
            Prefixes::V4 => true,
            Prefixes::V4Early => service.early_prefixed(),
            Prefixes::None => false,
        };
        if prefixed {
            format!("{}_{name}", service.prefix())
        } else {
            name.to_string()
        }
    }

    /// The collections the other namings would write for `service` and
    /// this naming does not: a target holding any of them was written for
    /// another Cells version.
    pub fn other_namings(&self, service: Service) -> Vec<(Prefixes, String)> {
        let mine = service.collections(self);
        [Prefixes::V4, Prefixes::V4Early, Prefixes::None]
            .into_iter()
            .filter(|p| *p != self.prefixes)
            .flat_map(|p| {
                service
                    .collections(&MapOptions { prefixes: p })
                    .into_iter()
                    .map(move |c| (p, c))
            })
            .filter(|(_, c)| !mine.contains(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_v4_prefixes_every_collection() {
        let o = |p| MapOptions { prefixes: p };
        assert_eq!(
            o(Prefixes::V4).collection(Service::Chat, "rooms"),
            "chat_rooms"
        );
        assert_eq!(
            Service::Activity.collections(&o(Prefixes::V4)),
            [
                "activity_activities",
                "activity_subscriptions",
                "activity_markers"
            ]
        );
        assert_eq!(
            o(Prefixes::V4Early).collection(Service::Versions, "versions"),
            "versions"
        );
        assert_eq!(
            o(Prefixes::V4Early).collection(Service::Jobs, "tasks"),
            "jobs_tasks"
        );
        assert_eq!(
            o(Prefixes::None).collection(Service::Jobs, "tasks"),
            "tasks"
        );
        assert_eq!("all".parse::<Prefixes>(), Ok(Prefixes::V4));
        assert!("v5".parse::<Prefixes>().unwrap_err().contains("v4-early"));
    }

    #[test]
    fn other_namings_are_what_this_one_does_not_write() {
        let v4 = MapOptions::default();
        let other: Vec<String> = v4
            .other_namings(Service::Activity)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert!(other.contains(&"activities".to_string()));
        assert!(!other.contains(&"activity_activities".to_string()));
        // Docstore is prefixed by v4 and v4-early alike: only `none` differs.
        let d: Vec<String> = v4
            .other_namings(Service::Docstore)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(d, ["documents"]);
    }

    #[test]
    fn index_names_are_the_drivers() {
        let ix = Service::Versions.indexes(&MapOptions::default());
        assert_eq!(ix[0].0, "versions_versions");
        let names: Vec<&str> = ix[0].1.iter().map(|d| d.get_str("name").unwrap()).collect();
        assert_eq!(names, ["node_uuid_1", "node_uuid_1_version_id_1", "ts_-1"]);
    }
}
