//! Fast path of `prepare`: a [`serde::Serializer`] that writes a record's canonical JSON
//! straight from its `Serialize` impl, without building a `serde_json::Value` tree.
//!
//! It produces exactly what the `Value` path produces (`serde_json::to_value`, then
//! `chain::split_content`, `PreMeta::new`, `Columns::from_meta`):
//!
//! - integers up to 64 bits and booleans are written directly (itoa, as serde_json
//!   does); every other scalar is turned into a `Value` by `serde_json::value::Serializer`
//!   (the serializer `to_value` uses) and written by `chain::write_canonical`, so numbers
//!   print as they always did (non-finite floats as `null`, `f32` widened to `f64`);
//!   strings go through `chain::write_str`, the same escaping;
//! - every object is written field by field into one arena, then its `"key":value`
//!   pieces are sorted by the keys' UTF-8 bytes and joined in place;
//! - the top-level object is kept as pieces, so content fields can be set aside, the
//!   ledger's own fields added, and the metadata split around `prev_hash` and `seq`.
//!
//! Anything this path does not handle the same way for certain (non-string map keys,
//! duplicate keys, a `kind` that does not match the variant, metadata content mode, a
//! top level that is not an object) makes it give up; the caller then takes the `Value`
//! path, which stays the reference.

use std::cell::RefCell;
use std::fmt;

use serde::ser::{self, Serialize};
use serde_json::Value;

use super::chain::{self, PreMeta, CONTENT_FIELDS};
use super::index::Columns;
use super::ContentMode;
use crate::record::Record;

/// Why the fast path gave up (never shown: the caller falls back to the `Value` path).
#[derive(Debug)]
pub(crate) struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not handled by the canonical fast path")
    }
}

impl std::error::Error for GiveUp {}

impl ser::Error for GiveUp {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        GiveUp
    }
}

type R<T = ()> = Result<T, GiveUp>;

/// How an object key is known, for sorting.
#[derive(Debug, Clone)]
enum Key {
    /// A struct field name.
    Static(&'static str),
    /// Written without escapes: the raw key is the arena text between the quotes.
    Arena,
    /// Written with escapes: the raw key.
    Owned(String),
}

/// One `"key":value` piece of an object, in the arena: `start..end`, value from `val`.
#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    /// The key's first 8 bytes, zero-padded, big-endian: orders most keys without
    /// comparing the strings (see `order`).
    pre: u64,
    start: usize,
    val: usize,
    end: usize,
}

/// The first 8 bytes of `k`, zero-padded, as a big-endian number. If two prefixes
/// differ they order the keys as their bytes do (a padding zero only ever meets a real
/// byte when the shorter key is a prefix of the longer one, which sorts first anyway).
fn prefix(k: &str) -> u64 {
    let b = k.as_bytes();
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(a)
}

/// Key order (UTF-8 bytes) of two pieces.
fn order(a: &Entry, b: &Entry, arena: &str) -> std::cmp::Ordering {
    a.pre
        .cmp(&b.pre)
        .then_with(|| a.key(arena).cmp(b.key(arena)))
}

impl Entry {
    fn key<'a>(&'a self, arena: &'a str) -> &'a str {
        match &self.key {
            Key::Static(k) => k,
            Key::Arena => &arena[self.start + 1..self.val - 2],
            Key::Owned(k) => k,
        }
    }
}

/// A content field set aside: `"field":value` at `start..end` of the content arena.
struct ContentEntry {
    /// Index into [`CONTENT_OBJECTS`].
    obj: usize,
    key: Key,
    start: usize,
    val: usize,
    end: usize,
}

/// The objects content fields live in, in key order.
const CONTENT_OBJECTS: [&str; 2] = ["request", "response"];

/// Buffers reused from record to record (one set per thread).
#[derive(Default)]
struct State {
    out: String,
    tmp: String,
    entries: Vec<Entry>,
    content: String,
    content_entries: Vec<ContentEntry>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// What a value being serialised is, for the record's shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Any nested value.
    Plain,
    /// The record itself; `split`: content fields are set aside.
    Root { split: bool },
    /// `record[CONTENT_OBJECTS[i]]` of an interaction: its content fields are set aside.
    ContentHolder(usize),
}

impl Role {
    fn child(self, key: &str) -> Role {
        match self {
            Role::Root { split: true } => CONTENT_OBJECTS
                .iter()
                .position(|o| *o == key)
                .map_or(Role::Plain, Role::ContentHolder),
            _ => Role::Plain,
        }
    }
}

struct Ser<'a> {
    st: &'a mut State,
    role: Role,
}

impl Ser<'_> {
    fn scalar(self, v: Result<Value, serde_json::Error>) -> R {
        if matches!(self.role, Role::Root { .. }) {
            return Err(GiveUp);
        }
        chain::write_canonical(&mut self.st.out, &v.map_err(|_| GiveUp)?);
        Ok(())
    }

    /// An integer, written as serde_json writes it (itoa), without the `Value` detour.
    fn int(self, v: impl itoa::Integer) -> R {
        let s = self.plain()?;
        s.st.out.push_str(itoa::Buffer::new().format(v));
        Ok(())
    }

    fn plain(self) -> R<Self> {
        match self.role {
            Role::Root { .. } => Err(GiveUp),
            _ => Ok(Ser {
                st: self.st,
                role: Role::Plain,
            }),
        }
    }
}

type VS = serde_json::value::Serializer;

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = GiveUp;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = Obj<'a>;

    fn serialize_bool(self, v: bool) -> R {
        let s = self.plain()?;
        s.st.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> R {
        self.int(v)
    }
    fn serialize_i16(self, v: i16) -> R {
        self.int(v)
    }
    fn serialize_i32(self, v: i32) -> R {
        self.int(v)
    }
    fn serialize_i64(self, v: i64) -> R {
        self.int(v)
    }
    fn serialize_i128(self, v: i128) -> R {
        self.scalar(ser::Serializer::serialize_i128(VS {}, v))
    }
    fn serialize_u8(self, v: u8) -> R {
        self.int(v)
    }
    fn serialize_u16(self, v: u16) -> R {
        self.int(v)
    }
    fn serialize_u32(self, v: u32) -> R {
        self.int(v)
    }
    fn serialize_u64(self, v: u64) -> R {
        self.int(v)
    }
    fn serialize_u128(self, v: u128) -> R {
        self.scalar(ser::Serializer::serialize_u128(VS {}, v))
    }
    fn serialize_f32(self, v: f32) -> R {
        self.scalar(ser::Serializer::serialize_f32(VS {}, v))
    }
    fn serialize_f64(self, v: f64) -> R {
        self.scalar(ser::Serializer::serialize_f64(VS {}, v))
    }
    fn serialize_char(self, v: char) -> R {
        self.scalar(ser::Serializer::serialize_char(VS {}, v))
    }
    fn serialize_str(self, v: &str) -> R {
        let s = self.plain()?;
        chain::write_str(&mut s.st.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> R {
        self.scalar(ser::Serializer::serialize_bytes(VS {}, v))
    }
    fn serialize_none(self) -> R {
        self.serialize_unit()
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        let s = self.plain()?;
        s.st.out.push_str("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> R {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, variant: &'static str) -> R {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _name: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> R {
        let s = self.plain()?;
        s.st.out.push('{');
        chain::write_str(&mut s.st.out, variant);
        s.st.out.push(':');
        value.serialize(Ser {
            st: &mut *s.st,
            role: Role::Plain,
        })?;
        s.st.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> R<Seq<'a>> {
        let s = self.plain()?;
        s.st.out.push('[');
        Ok(Seq {
            st: s.st,
            first: true,
            wrapped: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> R<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> R<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> R<Seq<'a>> {
        let s = self.plain()?;
        s.st.out.push('{');
        chain::write_str(&mut s.st.out, variant);
        s.st.out.push_str(":[");
        Ok(Seq {
            st: s.st,
            first: true,
            wrapped: true,
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> R<Obj<'a>> {
        Ok(Obj::new(self.st, self.role, false))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> R<Obj<'a>> {
        Ok(Obj::new(self.st, self.role, false))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> R<Obj<'a>> {
        let s = self.plain()?;
        s.st.out.push('{');
        chain::write_str(&mut s.st.out, variant);
        s.st.out.push(':');
        Ok(Obj::new(s.st, Role::Plain, true))
    }
}

struct Seq<'a> {
    st: &'a mut State,
    first: bool,
    /// A tuple variant: `{"variant":[…]}`.
    wrapped: bool,
}

impl Seq<'_> {
    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
        if !self.first {
            self.st.out.push(',');
        }
        self.first = false;
        value.serialize(Ser {
            st: &mut *self.st,
            role: Role::Plain,
        })
    }
    fn finish(self) -> R {
        self.st.out.push(']');
        if self.wrapped {
            self.st.out.push('}');
        }
        Ok(())
    }
}

/// serde's four sequence shapes are one JSON array here.
macro_rules! seq_shapes {
    ($($shape:ident::$element:ident),*) => {$(
        impl ser::$shape for Seq<'_> {
            type Ok = ();
            type Error = GiveUp;
            fn $element<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
                self.element(value)
            }
            fn end(self) -> R {
                self.finish()
            }
        }
    )*};
}

seq_shapes!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object being written: its pieces are `entries[base..]`, its text starts at `start`.
struct Obj<'a> {
    st: &'a mut State,
    role: Role,
    base: usize,
    start: usize,
    /// A struct variant: `{"variant":{…}}`.
    wrapped: bool,
    /// Map key written, value pending: `(key, piece start)`.
    pending: Option<(Key, usize)>,
}

impl<'a> Obj<'a> {
    fn new(st: &'a mut State, role: Role, wrapped: bool) -> Obj<'a> {
        Obj {
            base: st.entries.len(),
            start: st.out.len(),
            st,
            role,
            wrapped,
            pending: None,
        }
    }

    fn value<T: ?Sized + Serialize>(&mut self, key: Key, start: usize, value: &T) -> R {
        self.st.out.push(':');
        let val = self.st.out.len();
        let mut e = Entry {
            key,
            pre: 0,
            start,
            val,
            end: 0,
        };
        e.pre = prefix(e.key(&self.st.out));
        let role = self.role.child(e.key(&self.st.out));
        value.serialize(Ser {
            st: &mut *self.st,
            role,
        })?;
        self.st.entries.push(Entry {
            end: self.st.out.len(),
            ..e
        });
        Ok(())
    }

    fn finish(self) -> R {
        let st = self.st;
        match self.role {
            // The caller takes the pieces as they are.
            Role::Root { .. } => return Ok(()),
            Role::ContentHolder(obj) => {
                let base = self.base;
                let mut i = base;
                while i < st.entries.len() {
                    let k = st.entries[i].key(&st.out);
                    let is_content = CONTENT_FIELDS
                        .iter()
                        .any(|(o, f)| *o == CONTENT_OBJECTS[obj] && *f == k);
                    if is_content {
                        let e = st.entries.remove(i);
                        let at = st.content.len();
                        st.content.push_str(&st.out[e.start..e.end]);
                        let key = match e.key {
                            Key::Arena => Key::Owned(e.key(&st.out).to_owned()),
                            k => k,
                        };
                        st.content_entries.push(ContentEntry {
                            obj,
                            key,
                            start: at,
                            val: at + (e.val - e.start),
                            end: at + (e.end - e.start),
                        });
                    } else {
                        i += 1;
                    }
                }
            }
            Role::Plain => {}
        }
        let State {
            out, tmp, entries, ..
        } = st;
        let pieces = &mut entries[self.base..];
        sort_pieces(pieces, out)?;
        tmp.clear();
        tmp.push('{');
        for (i, e) in pieces.iter().enumerate() {
            if i > 0 {
                tmp.push(',');
            }
            tmp.push_str(&out[e.start..e.end]);
        }
        tmp.push('}');
        out.truncate(self.start);
        out.push_str(tmp);
        entries.truncate(self.base);
        if self.wrapped {
            out.push('}');
        }
        Ok(())
    }
}

/// Sort pieces by key (UTF-8 bytes); duplicate keys give up (the `Value` path keeps the
/// last one).
fn sort_pieces(pieces: &mut [Entry], arena: &str) -> R {
    use std::cmp::Ordering::{Equal, Less};
    if !pieces.is_sorted_by(|a, b| order(a, b, arena) == Less) {
        pieces.sort_unstable_by(|a, b| order(a, b, arena));
        if pieces
            .windows(2)
            .any(|w| order(&w[0], &w[1], arena) == Equal)
        {
            return Err(GiveUp);
        }
    }
    Ok(())
}

impl ser::SerializeStruct for Obj<'_> {
    type Ok = ();
    type Error = GiveUp;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> R {
        let start = self.st.out.len();
        chain::write_str(&mut self.st.out, key);
        self.value(Key::Static(key), start, value)
    }
    fn end(self) -> R {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Obj<'_> {
    type Ok = ();
    type Error = GiveUp;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> R {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> R {
        self.finish()
    }
}

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = GiveUp;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> R {
        let start = self.st.out.len();
        let k = key.serialize(KeySer {
            out: &mut self.st.out,
        })?;
        self.pending = Some((k, start));
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
        let (key, start) = self.pending.take().ok_or(GiveUp)?;
        self.value(key, start, value)
    }
    fn end(self) -> R {
        self.finish()
    }
}

/// Map keys: strings only (anything else gives up).
struct KeySer<'a> {
    out: &'a mut String,
}

macro_rules! give_up {
    ($($f:ident: $t:ty),*) => {
        $(fn $f(self, _v: $t) -> R<Key> { Err(GiveUp) })*
    };
}

impl ser::Serializer for KeySer<'_> {
    type Ok = Key;
    type Error = GiveUp;
    type SerializeSeq = ser::Impossible<Key, GiveUp>;
    type SerializeTuple = ser::Impossible<Key, GiveUp>;
    type SerializeTupleStruct = ser::Impossible<Key, GiveUp>;
    type SerializeTupleVariant = ser::Impossible<Key, GiveUp>;
    type SerializeMap = ser::Impossible<Key, GiveUp>;
    type SerializeStruct = ser::Impossible<Key, GiveUp>;
    type SerializeStructVariant = ser::Impossible<Key, GiveUp>;

    fn serialize_str(self, v: &str) -> R<Key> {
        let at = self.out.len();
        chain::write_str(self.out, v);
        Ok(if self.out.len() - at == v.len() + 2 {
            Key::Arena
        } else {
            Key::Owned(v.to_owned())
        })
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> R<Key> {
        value.serialize(self)
    }
    give_up!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
        serialize_bytes: &[u8], serialize_unit_struct: &'static str);
    fn serialize_none(self) -> R<Key> {
        Err(GiveUp)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _v: &T) -> R<Key> {
        Err(GiveUp)
    }
    fn serialize_unit(self) -> R<Key> {
        Err(GiveUp)
    }
    fn serialize_unit_variant(self, _n: &'static str, _i: u32, _v: &'static str) -> R<Key> {
        Err(GiveUp)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _value: &T,
    ) -> R<Key> {
        Err(GiveUp)
    }
    fn serialize_seq(self, _len: Option<usize>) -> R<Self::SerializeSeq> {
        Err(GiveUp)
    }
    fn serialize_tuple(self, _len: usize) -> R<Self::SerializeTuple> {
        Err(GiveUp)
    }
    fn serialize_tuple_struct(
        self,
        _n: &'static str,
        _len: usize,
    ) -> R<Self::SerializeTupleStruct> {
        Err(GiveUp)
    }
    fn serialize_tuple_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _len: usize,
    ) -> R<Self::SerializeTupleVariant> {
        Err(GiveUp)
    }
    fn serialize_map(self, _len: Option<usize>) -> R<Self::SerializeMap> {
        Err(GiveUp)
    }
    fn serialize_struct(self, _n: &'static str, _len: usize) -> R<Self::SerializeStruct> {
        Err(GiveUp)
    }
    fn serialize_struct_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _len: usize,
    ) -> R<Self::SerializeStructVariant> {
        Err(GiveUp)
    }
}

// === the record ===

/// A record's metadata (with holes for `prev_hash` and `seq`), content and index columns.
pub(crate) struct Parts {
    pub pre: PreMeta,
    pub content: Option<String>,
    pub cols: Columns,
}

/// The fast path of `prepare`; `None` when the caller must take the `Value` path.
pub(crate) fn prepare(record: &Record, mode: ContentMode, hmac_key_id: &str) -> Option<Parts> {
    if mode == ContentMode::Metadata {
        return None;
    }
    STATE.with(|cell| {
        let mut st = cell.try_borrow_mut().ok()?;
        prepare_in(&mut st, record, mode, hmac_key_id)
    })
}

fn prepare_in(
    st: &mut State,
    record: &Record,
    mode: ContentMode,
    hmac_key_id: &str,
) -> Option<Parts> {
    st.out.clear();
    st.entries.clear();
    st.content.clear();
    st.content_entries.clear();
    let split = matches!(record, Record::Interaction(_));
    record
        .serialize(Ser {
            st: &mut *st,
            role: Role::Root { split },
        })
        .ok()?;
    // `split_content` splits exactly the records whose `kind` is "interaction".
    let kind_is_interaction = st
        .entries
        .iter()
        .find(|e| e.key(&st.out) == "kind")
        .is_some_and(|e| &st.out[e.val..e.end] == "\"interaction\"");
    if split != kind_is_interaction {
        return None;
    }

    let content = if split {
        Some(content_text(st).ok()?)
    } else {
        None
    };

    // The ledger's own fields replace whatever the record carried under those names.
    let State { out, entries, .. } = &mut *st;
    let dropped: &[&str] = if content.is_some() {
        &[
            "seq",
            "prev_hash",
            "hash",
            "hmac",
            "hmac_key_id",
            "content_sha256",
            "content_mode",
        ]
    } else {
        &["seq", "prev_hash", "hash", "hmac", "hmac_key_id"]
    };
    entries.retain(|e| !dropped.contains(&e.key(out)));
    let mut add = |key: &'static str, value: &str| {
        let start = out.len();
        chain::write_str(out, key);
        out.push(':');
        let val = out.len();
        chain::write_str(out, value);
        entries.push(Entry {
            key: Key::Static(key),
            pre: prefix(key),
            start,
            val,
            end: out.len(),
        });
    };
    if let Some(c) = &content {
        add("content_sha256", &chain::sha256_hex(c.as_bytes()));
        add("content_mode", mode.as_str());
    }
    add("hmac_key_id", hmac_key_id);
    sort_pieces(entries, out).ok()?;

    let pre = PreMeta::from_pieces(entries.iter().map(|e| (e.key(out), &out[e.start..e.end])));
    let cols = columns(entries, out);
    Some(Parts { pre, content, cols })
}

/// The canonical content object from the fields set aside.
fn content_text(st: &mut State) -> R<String> {
    let State {
        content,
        content_entries,
        ..
    } = st;
    fn key<'a>(e: &'a ContentEntry, content: &'a str) -> (usize, &'a str) {
        let k = match &e.key {
            Key::Static(k) => k,
            Key::Owned(k) => k.as_str(),
            Key::Arena => &content[e.start + 1..e.val - 2],
        };
        (e.obj, k)
    }
    let content: &str = content;
    content_entries.sort_unstable_by(|a, b| key(a, content).cmp(&key(b, content)));
    if content_entries
        .windows(2)
        .any(|w| key(&w[0], content) == key(&w[1], content))
    {
        return Err(GiveUp);
    }
    let mut s = String::with_capacity(content.len() + 32);
    s.push('{');
    let mut open: Option<usize> = None;
    for e in content_entries.iter() {
        if open != Some(e.obj) {
            if open.is_some() {
                s.push_str("},");
            }
            chain::write_str(&mut s, CONTENT_OBJECTS[e.obj]);
            s.push_str(":{");
            open = Some(e.obj);
        } else {
            s.push(',');
        }
        s.push_str(&content[e.start..e.end]);
    }
    if open.is_some() {
        s.push('}');
    }
    s.push('}');
    Ok(s)
}

/// `Columns::from_meta`, from the sorted top-level pieces.
fn columns(entries: &[Entry], out: &str) -> Columns {
    let get = |k: &str| -> Option<&str> {
        entries
            .binary_search_by(|e| e.key(out).cmp(k))
            .ok()
            .map(|i| &out[entries[i].val..entries[i].end])
    };
    #[derive(serde::Deserialize)]
    struct Tokens {
        input_tokens: Option<Value>,
        output_tokens: Option<Value>,
    }
    let usage = get("usage").and_then(|u| serde_json::from_str::<Tokens>(u).ok());
    let tok = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as i64);
    Columns::assemble(
        |k| get(k).and_then(json_str),
        |k| get(k).filter(|v| *v != "null").map(str::to_owned),
        (
            tok(usage.as_ref().and_then(|u| u.input_tokens.as_ref())),
            tok(usage.as_ref().and_then(|u| u.output_tokens.as_ref())),
        ),
        get("cost_usd").and_then(json_f64),
    )
}

/// The string a canonical JSON text holds (`Value::as_str`), if it is a string.
fn json_str(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str(text).ok()
    } else {
        Some(inner.to_owned())
    }
}

/// `Value::as_f64` of a canonical JSON text. The text is serde_json's shortest
/// round-trip form of an `f64` (or an integer), so the standard library's correctly
/// rounded parser gives back exactly the number (an integer as `n as f64` would).
fn json_f64(text: &str) -> Option<f64> {
    let first = text.as_bytes().first()?;
    if *first == b'-' || first.is_ascii_digit() {
        text.parse().ok()
    } else {
        None
    }
}
