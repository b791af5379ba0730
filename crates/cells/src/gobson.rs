//! One rule for every Cells document: a field's BSON name and type are what
//! the Go MongoDB driver's default codec makes of Cells' Go struct.
//!
//! Cells connects with no custom codec registry, so a protoc-gen-go struct
//! (`tree.ChangeLog`, `activity.Object`, `chat.ChatRoom`, …) is written as:
//! - every exported field, zero values included (no `omitempty`), in the
//!   struct's declaration order;
//! - named by the Go field name lower-cased (`MTime` → `mtime`,
//!   `RoomTypeObject` → `roomtypeobject`, `type_url` → Go `TypeUrl` →
//!   `typeurl`);
//! - `string` as a string, `bool` as a boolean, `int32` and enums as int32,
//!   `int64` as int64, `float`/`double` as a double, `[]byte` as binary
//!   (subtype 0), a nested message as a sub-document, a repeated field as an
//!   array, a `map` as a document with its keys unchanged; a nil pointer,
//!   slice, map or byte slice as null.
//!
//! The schemas are `proto/cells.proto`, compiled by prost-build; this module
//! walks their descriptors (prost-reflect), so each message's shape is
//! stated once, in the `.proto`. Two inputs:
//! - binary protobuf ([`from_proto`]), decoded by prost-reflect (versions);
//! - the jsoniter JSON Cells keeps in Bolt ([`from_json`]): keys are the
//!   proto names (matched as Go's `encoding/json` does, exact first, then
//!   case-insensitively), zero values omitted, enums as numbers, bytes as
//!   base64, Timestamps as `{"seconds","nanos"}`.
//!
//! A JSON key the schema does not declare is not dropped: it is carried
//! under its lower-cased name, objects recursively (Go structs are far more
//! common than maps in these messages; the maps that matter are declared),
//! with one structural exception: an object of exactly `type_url` and
//! `value` is a `google.protobuf.Any`, written `{typeurl, value: binary}`.

use base64::Engine as _;
use mongodb::bson::{spec::BinarySubtype, Binary, Bson, Document};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::OnceLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cells.bin"));

/// The generated Rust types of `proto/cells.proto` (tests decode with them).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/cells.rs"));
}

/// The schemas, and each message's fields as the rule walks them, worked
/// out once: declaration order, BSON names, kinds.
struct Schemas {
    pool: DescriptorPool,
    plans: HashMap<String, Vec<Field>>,
}

/// One field of a message, with what the rule needs of it precomputed.
struct Field {
    desc: FieldDescriptor,
    /// The proto name, also the JSON key jsoniter writes.
    name: String,
    /// The Go field name lower-cased.
    bson: String,
    /// Go's zero value is nil (a list, map, message or byte slice).
    nullable: bool,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let pool = DescriptorPool::decode(DESCRIPTORS).expect("the compiled cells.proto decodes");
        let plans = pool
            .all_messages()
            .map(|m| {
                let fields = declared(&m)
                    .into_iter()
                    .map(|f| Field {
                        name: f.name().to_string(),
                        bson: bson_name(f.name()),
                        nullable: f.is_list() || f.is_map() || is_nullable(&f),
                        desc: f,
                    })
                    .collect();
                (m.full_name().to_string(), fields)
            })
            .collect();
        Schemas { pool, plans }
    })
}

fn plan(desc: &MessageDescriptor) -> &'static [Field] {
    schemas()
        .plans
        .get(desc.full_name())
        .map_or(&[], Vec::as_slice)
}

/// A message of `proto/cells.proto` by its name (`ChangeLog`, `ChatRoom`, …).
pub fn message(name: &str) -> MessageDescriptor {
    schemas()
        .pool
        .get_message_by_name(&format!("cells.{name}"))
        .unwrap_or_else(|| panic!("cells.proto declares {name}"))
}

/// The BSON name of a field: its Go name (protoc-gen-go camel-cases the
/// proto name, dropping underscores) lower-cased.
pub fn bson_name(proto_name: &str) -> String {
    proto_name
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Binary protobuf of `desc` as the Go codec writes the decoded struct.
pub fn from_proto(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Document, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("the value is not a valid {} protobuf ({e})", desc.name()))?;
    Ok(message_doc(&msg))
}

fn message_doc(msg: &DynamicMessage) -> Document {
    let mut d = Document::new();
    for f in plan(&msg.descriptor()) {
        let v = if f.nullable && !msg.has_field(&f.desc) {
            // Never set: a nil slice, map, byte slice or pointer.
            Bson::Null
        } else {
            field_value(&msg.get_field(&f.desc))
        };
        d.insert(f.bson.clone(), v);
    }
    d
}

/// A message's fields in declaration order, the Go struct's field order
/// (prost-reflect's own iteration is by number).
fn declared(desc: &MessageDescriptor) -> Vec<FieldDescriptor> {
    desc.descriptor_proto()
        .field
        .iter()
        .filter_map(|f| desc.get_field(u32::try_from(f.number()).ok()?))
        .collect()
}

/// Kinds whose Go zero value is nil (written as null).
fn is_nullable(f: &FieldDescriptor) -> bool {
    matches!(f.kind(), Kind::Message(_) | Kind::Bytes)
}

fn field_value(v: &Value) -> Bson {
    match v {
        Value::Map(entries) => {
            let mut keyed: Vec<(String, Bson)> = entries
                .iter()
                .map(|(k, v)| (map_key(k), scalar(v)))
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Bson::Document(keyed.into_iter().collect())
        }
        other => scalar(other),
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

/// A Go `[]byte`: binary (subtype 0), or null when empty (a nil slice:
/// protobuf and JSON decoding leave an absent or empty one nil).
fn binary(bytes: Vec<u8>) -> Bson {
    if bytes.is_empty() {
        return Bson::Null;
    }
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

/// A base64 JSON string (how jsoniter writes `[]byte`) as [`binary`].
fn base64_binary(s: &str) -> Result<Bson, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(binary)
        .map_err(|e| format!("is not base64 ({e})"))
}

fn scalar(v: &Value) -> Bson {
    match v {
        Value::Bool(b) => Bson::Boolean(*b),
        Value::I32(n) | Value::EnumNumber(n) => Bson::Int32(*n),
        Value::I64(n) => Bson::Int64(*n),
        // Go has no unsigned BSON type: the codec writes uint32 as int64.
        Value::U32(n) => Bson::Int64(i64::from(*n)),
        Value::U64(n) => Bson::Int64(*n as i64),
        Value::F32(x) => Bson::Double(f64::from(*x)),
        Value::F64(x) => Bson::Double(*x),
        Value::String(s) => Bson::String(s.clone()),
        Value::Bytes(b) => binary(b.to_vec()),
        Value::Message(m) => Bson::Document(message_doc(m)),
        Value::List(items) => Bson::Array(items.iter().map(scalar).collect()),
        Value::Map(_) => Bson::Null,
    }
}

/// Bolt's jsoniter JSON of `desc` as the Go codec writes the struct
/// jsoniter decodes from it. `Err`: one sentence naming the field.
pub fn from_json(desc: &MessageDescriptor, json: &Json) -> Result<Document, String> {
    let Json::Object(obj) = json else {
        return Err(format!("the value is not a JSON object of {}", desc.name()));
    };
    let mut used = 0usize;
    let mut d = Document::new();
    for f in plan(desc) {
        // encoding/json: the exact key, else the first case-insensitive one
        // (looked for only while some key is still unmatched).
        let found = obj.get(&f.name).or_else(|| {
            (used < obj.len())
                .then(|| {
                    obj.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&f.name))
                        .map(|(_, v)| v)
                })
                .flatten()
        });
        let v = match found {
            Some(v) => {
                used += 1;
                json_field(&f.desc, v).map_err(|e| format!("{}.{}: {e}", desc.name(), f.name))?
            }
            None => zero(&f.desc),
        };
        d.insert(f.bson.clone(), v);
    }
    if used < obj.len() {
        for (k, v) in obj {
            let declared = plan(desc).iter().any(|f| f.name.eq_ignore_ascii_case(k));
            if !declared {
                d.insert(bson_name(k), generic(v));
            }
        }
    }
    Ok(d)
}

/// The Go zero value of a field the JSON omitted.
fn zero(f: &FieldDescriptor) -> Bson {
    if f.is_list() || f.is_map() || is_nullable(f) {
        return Bson::Null;
    }
    match f.kind() {
        Kind::Bool => Bson::Boolean(false),
        Kind::String => Bson::String(String::new()),
        Kind::Float | Kind::Double => Bson::Double(0.0),
        Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Uint64
        | Kind::Fixed64 => Bson::Int64(0),
        _ => Bson::Int32(0),
    }
}

fn json_field(f: &FieldDescriptor, v: &Json) -> Result<Bson, String> {
    if v.is_null() {
        return Ok(zero(f));
    }
    if f.is_map() {
        let Json::Object(m) = v else {
            return Err("is not a JSON object".into());
        };
        let Kind::Message(entry) = f.kind() else {
            return Err("is a map without an entry type".into());
        };
        let value_field = entry.map_entry_value_field();
        let mut d = Document::new();
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        for k in keys {
            d.insert(k.clone(), json_single(&value_field, &m[k])?);
        }
        return Ok(Bson::Document(d));
    }
    if f.is_list() {
        let Json::Array(items) = v else {
            return Err("is not a JSON array".into());
        };
        return items
            .iter()
            .map(|i| json_single(f, i))
            .collect::<Result<Vec<_>, _>>()
            .map(Bson::Array);
    }
    json_single(f, v)
}

/// One value of `f`'s kind (a list's item, a map's value, or the field).
fn json_single(f: &FieldDescriptor, v: &Json) -> Result<Bson, String> {
    let int = |v: &Json| {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|x| x.fract() == 0.0).map(|x| x as i64))
    };
    Ok(match f.kind() {
        Kind::Message(m) => match v {
            Json::Null => Bson::Null,
            _ => Bson::Document(from_json(&m, v)?),
        },
        Kind::String => Bson::String(v.as_str().ok_or("is not a string")?.to_string()),
        Kind::Bool => Bson::Boolean(v.as_bool().ok_or("is not a boolean")?),
        Kind::Bytes => base64_binary(v.as_str().ok_or("is not a base64 string")?)?,
        Kind::Float | Kind::Double => Bson::Double(v.as_f64().ok_or("is not a number")?),
        Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Uint64
        | Kind::Fixed64 => Bson::Int64(int(v).ok_or("is not an integer")?),
        _ => {
            let n = int(v).ok_or("is not an integer")?;
            Bson::Int32(i32::try_from(n).map_err(|_| format!("{n} overflows int32"))?)
        }
    })
}

/// A JSON value of a field the schema does not declare (see the module doc).
fn generic(v: &Json) -> Bson {
    match v {
        Json::Null => Bson::Null,
        Json::Bool(b) => Bson::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32),
            None => Bson::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Bson::String(s.clone()),
        Json::Array(items) => Bson::Array(items.iter().map(generic).collect()),
        Json::Object(o) => {
            if o.len() == 2 && o.contains_key("type_url") {
                if let (Some(t), Some(val)) = (
                    o["type_url"].as_str(),
                    o.get("value").and_then(Json::as_str),
                ) {
                    if let Ok(value) = base64_binary(val) {
                        let mut d = Document::new();
                        d.insert("typeurl", t);
                        d.insert("value", value);
                        return Bson::Document(d);
                    }
                }
            }
            Bson::Document(o.iter().map(|(k, v)| (bson_name(k), generic(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn names_are_go_names_lower_cased() {
        assert_eq!(bson_name("MTime"), "mtime");
        assert_eq!(bson_name("RoomTypeObject"), "roomtypeobject");
        assert_eq!(bson_name("type_url"), "typeurl");
        assert_eq!(bson_name("jsonLdContext"), "jsonldcontext");
    }

    #[test]
    fn a_changelog_decodes_with_every_field_typed() {
        let cl = pb::ChangeLog {
            uuid: "v1".into(),
            m_time: 1_714_557_600,
            size: 42,
            data: vec![1, 2, 3],
            owner_uuid: "alice".into(),
            event: Some(pb::NodeChangeEvent {
                r#type: 3,
                metadata: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            }),
            location: Some(pb::Node {
                uuid: "n1".into(),
                path: "pydiods1/a.txt".into(),
                r#type: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = from_proto(&message("ChangeLog"), &cl.encode_to_vec()).unwrap();
        let names: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "uuid",
                "description",
                "mtime",
                "size",
                "data",
                "owneruuid",
                "event",
                "location"
            ]
        );
        assert_eq!(d.get_i64("mtime").unwrap(), 1_714_557_600);
        assert_eq!(d.get_i64("size").unwrap(), 42);
        assert_eq!(d.get_binary_generic("data").unwrap(), &vec![1, 2, 3]);
        assert_eq!(d.get_str("description").unwrap(), "");
        let ev = d.get_document("event").unwrap();
        assert_eq!(ev.get_i32("type").unwrap(), 3);
        assert_eq!(ev.get("source"), Some(&Bson::Null));
        assert_eq!(
            ev.get_document("metadata").unwrap().get_str("k").unwrap(),
            "v"
        );
        let loc = d.get_document("location").unwrap();
        assert_eq!(loc.get_str("path").unwrap(), "pydiods1/a.txt");
        assert_eq!(loc.get("commits"), Some(&Bson::Null));
        assert_eq!(loc.get_i32("mode").unwrap(), 0);
    }

    #[test]
    fn garbage_is_not_a_changelog() {
        // Field 1 announced as 100 bytes long, then the bytes end.
        let e = from_proto(&message("ChangeLog"), &[0x0a, 100, b'x']).unwrap_err();
        assert!(e.contains("not a valid ChangeLog"), "{e}");
    }

    #[test]
    fn json_fills_zero_values_and_keeps_unknown_keys() {
        let v: Json = serde_json::from_str(
            r#"{"Uuid":"r1","roomtypeobject":"ws-1","Users":["a"],"Extra":{"InnerKey":1}}"#,
        )
        .unwrap();
        let d = from_json(&message("ChatRoom"), &v).unwrap();
        assert_eq!(
            d.get_i32("type").unwrap(),
            0,
            "GLOBAL is type 0, omitted in Bolt JSON"
        );
        assert_eq!(
            d.get_str("roomtypeobject").unwrap(),
            "ws-1",
            "case-insensitive match"
        );
        assert_eq!(d.get_str("roomlabel").unwrap(), "");
        assert_eq!(d.get_i32("lastupdated").unwrap(), 0);
        assert_eq!(
            d.get_document("extra")
                .unwrap()
                .get_i32("innerkey")
                .unwrap(),
            1
        );
        let bad: Json = serde_json::from_str(r#"{"Type":"WORKSPACE"}"#).unwrap();
        let e = from_json(&message("ChatRoom"), &bad).unwrap_err();
        assert!(e.contains("ChatRoom.Type: is not an integer"), "{e}");
    }

    #[test]
    fn timestamps_maps_and_any() {
        let v: Json = serde_json::from_str(
            r#"{"id":"/a","type":7,"updated":{"seconds":1714557600,"nanos":5},"actor":{"id":"u"},"Weird":{"type_url":"t","value":"AQI="}}"#,
        )
        .unwrap();
        let d = from_json(&message("ActivityObject"), &v).unwrap();
        let u = d.get_document("updated").unwrap();
        assert_eq!(
            (u.get_i64("seconds").unwrap(), u.get_i32("nanos").unwrap()),
            (1_714_557_600, 5)
        );
        assert_eq!(d.get_document("actor").unwrap().get_str("id").unwrap(), "u");
        assert_eq!(d.get("published"), Some(&Bson::Null));
        assert_eq!(d.get_f64("latitude").unwrap(), 0.0);
        let any = d.get_document("weird").unwrap();
        assert_eq!(any.get_binary_generic("value").unwrap(), &vec![1, 2]);
        let mail: Json =
            serde_json::from_str(r#"{"TemplateData":{"KeepCase":"x"},"To":[{"Address":"b@x"}]}"#)
                .unwrap();
        let m = from_json(&message("Mail"), &mail).unwrap();
        assert_eq!(
            m.get_document("templatedata")
                .unwrap()
                .get_str("KeepCase")
                .unwrap(),
            "x"
        );
        assert_eq!(
            m.get_array("to").unwrap()[0]
                .as_document()
                .unwrap()
                .get_str("address")
                .unwrap(),
            "b@x"
        );
    }
}
