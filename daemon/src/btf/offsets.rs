//! Member paths → byte offsets: `("file", ["f_path", "dentry"])` is where `f_path.dentry`
//! lies from the start of a `struct file`, the number a BPF program adds to a `struct file *`
//! before `bpf_probe_read_kernel`.
//!
//! Members of anonymous structs and unions are found as C finds them, through any nesting;
//! each further name in a path steps into the previous member's struct type (through
//! typedefs and qualifiers, never through a pointer: the BPF side reads the pointer first).

use super::{
    Btf,
    kind::{Kind, RawType},
};

/// How long a typedef/qualifier chain, anonymous-member nesting or array-of-array chain may
/// be before the BTF is taken to be cyclic. Real kernels stay under 10.
const MAX_DEPTH: u32 = 32;

/// Where a member lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the outermost struct.
    pub offset: u32,
    /// Bytes in the member's type (typedefs and qualifiers resolved; pointers are the
    /// kernel's pointer size).
    pub size: u32,
}

/// Why a member path has no usable offset. `path` fields are the dotted path up to and
/// including the failing member, e.g. `file.f_path.dentry`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// No member names given, or an empty one (which would match anonymous members).
    #[error("invalid member path `{path}`: it needs one or more non-empty names")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// No struct or union by this name (not even a forward declaration).
    #[error("no struct or union named `{name}` in btf")]
    TypeNotFound {
        /// The name looked up.
        name: String,
    },
    /// Only a forward declaration exists, so there is no layout.
    #[error("`{name}` is only forward-declared in btf, without members")]
    OnlyDeclared {
        /// The name looked up.
        name: String,
    },
    /// The struct (or the member's struct type) has no such member, anonymous ones included.
    #[error("`{within}` has no member `{member}`")]
    MemberNotFound {
        /// The struct name or dotted path searched.
        within: String,
        /// The missing member.
        member: String,
    },
    /// The path continues past a member that is not a struct or union.
    #[error("`{path}` is a {kind}, not a struct or union, so the path cannot go on")]
    NotComposite {
        /// The member.
        path: String,
        /// Its kind after typedefs and qualifiers ("void" for void).
        kind: &'static str,
    },
    /// A bitfield: whole-field reads would pick up its neighbours.
    #[error("`{path}` is a {bits}-bit bitfield at bit {bit_offset}; only whole fields can be read")]
    Bitfield {
        /// The member.
        path: String,
        /// Its bit offset within its struct.
        bit_offset: u32,
        /// Its width in bits.
        bits: u32,
    },
    /// The member does not start on a byte boundary.
    #[error("`{path}` starts at bit {bit_offset}, not on a byte boundary")]
    Unaligned {
        /// The member.
        path: String,
        /// Its bit offset from the start of the outermost struct.
        bit_offset: u64,
    },
    /// The member's type has no size (void, a function, a forward declaration).
    #[error("`{path}` has type kind {kind}, which has no size")]
    NoSize {
        /// The member.
        path: String,
        /// The kind after typedefs and qualifiers ("void" for void).
        kind: &'static str,
    },
    /// Several different definitions share the name and give different answers.
    #[error("`{name}` has several definitions that disagree about `{path}`")]
    Ambiguous {
        /// The struct name.
        name: String,
        /// The path asked for.
        path: String,
    },
    /// A type chain longer than `MAX_DEPTH` (32): cyclic or corrupt BTF.
    #[error("type chain at `{path}` is deeper than {MAX_DEPTH} (cyclic btf?)")]
    TooDeep {
        /// The member being resolved.
        path: String,
    },
    /// The offset or size does not fit in a u32.
    #[error("the offset or size of `{path}` overflows u32")]
    Overflow {
        /// The member.
        path: String,
    },
}

/// A member found inside one struct: its bit offset there and its type.
struct Hit {
    bits: u64,
    type_id: u32,
}

impl Btf {
    /// Byte offset of `path` (one or more member names) within struct or union `name`.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32, OffsetError> {
        self.member(name, path).map(|m| m.offset)
    }

    /// Byte size of the type of the member at `path` within struct or union `name`.
    pub fn member_size(&self, name: &str, path: &[&str]) -> Result<u32, OffsetError> {
        self.member(name, path).map(|m| m.size)
    }

    /// Offset and size of the member at `path` within struct or union `name`.
    ///
    /// Forward declarations are skipped for the definition. A vmlinux can hold several
    /// different definitions under one name (file-local structs); all are tried and the
    /// answer must agree among those that have the path, else [`OffsetError::Ambiguous`].
    pub fn member(&self, name: &str, path: &[&str]) -> Result<Member, OffsetError> {
        if path.is_empty() || path.iter().any(|p| p.is_empty()) {
            return Err(OffsetError::InvalidPath {
                path: dotted(name, path),
            });
        }
        let candidates = self.named(name);
        if candidates.is_empty() {
            return Err(OffsetError::TypeNotFound { name: name.into() });
        }
        let mut found = None;
        let mut first_err = None;
        for &id in candidates {
            if self.ty(id).is_some_and(|t| t.kind == Kind::Fwd) {
                continue;
            }
            match (self.resolve(id, name, path), found) {
                (Ok(m), None) => found = Some(m),
                (Ok(m), Some(prev)) if m != prev => {
                    return Err(OffsetError::Ambiguous {
                        name: name.into(),
                        path: dotted(name, path),
                    });
                }
                (Ok(_), Some(_)) => {}
                (Err(e), _) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (found, first_err) {
            (Some(m), _) => Ok(m),
            (None, Some(e)) => Err(e),
            (None, None) => Err(OffsetError::OnlyDeclared { name: name.into() }),
        }
    }

    /// Walks `path` from struct/union `root`.
    fn resolve(&self, root: u32, name: &str, path: &[&str]) -> Result<Member, OffsetError> {
        let mut composite = root;
        let mut bits = 0u64;
        let mut type_id = 0;
        for (i, member) in path.iter().enumerate() {
            if i > 0 {
                composite = self.composite_of(type_id, &dotted(name, &path[..i]))?;
            }
            let at = dotted(name, &path[..=i]);
            let hit = self.find(composite, member, &at, 0)?.ok_or_else(|| {
                OffsetError::MemberNotFound {
                    within: dotted(name, &path[..i]),
                    member: (*member).into(),
                }
            })?;
            bits += hit.bits;
            type_id = hit.type_id;
        }
        let at = || dotted(name, path);
        if !bits.is_multiple_of(8) {
            return Err(OffsetError::Unaligned {
                path: at(),
                bit_offset: bits,
            });
        }
        Ok(Member {
            offset: u32::try_from(bits / 8).map_err(|_| OffsetError::Overflow { path: at() })?,
            size: self.size_of(type_id, &at(), 0)?,
        })
    }

    /// Finds `member` in struct/union `composite`, looking inside anonymous members too.
    fn find(
        &self,
        composite: u32,
        member: &str,
        at: &str,
        depth: u32,
    ) -> Result<Option<Hit>, OffsetError> {
        if depth > MAX_DEPTH {
            return Err(OffsetError::TooDeep { path: at.into() });
        }
        let Some(ty) = self.ty(composite) else {
            return Ok(None);
        };
        for m in ty.members() {
            // With kind_flag the offset word packs (bitfield size << 24 | bit offset).
            let (bit_offset, bitfield) = if ty.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            if m.name_off == 0 {
                let (inner, inner_ty) = self.strip(m.type_id, at)?;
                if inner_ty.is_some_and(|t| matches!(t.kind, Kind::Struct | Kind::Union))
                    && let Some(hit) = self.find(inner, member, at, depth + 1)?
                {
                    return Ok(Some(Hit {
                        bits: u64::from(bit_offset) + hit.bits,
                        type_id: hit.type_id,
                    }));
                }
                continue;
            }
            if self.name(m.name_off) != member.as_bytes() {
                continue;
            }
            let bits = match bitfield {
                0 => self.int_bitfield_width(m.type_id, at)?,
                bits => Some(bits),
            };
            if let Some(bits) = bits {
                return Err(OffsetError::Bitfield {
                    path: at.into(),
                    bit_offset,
                    bits,
                });
            }
            return Ok(Some(Hit {
                bits: bit_offset.into(),
                type_id: m.type_id,
            }));
        }
        Ok(None)
    }

    /// The width of a bitfield in the pre-kind_flag encoding, where the member's INT type
    /// itself carries fewer bits (or a bit offset) than its byte size.
    fn int_bitfield_width(&self, type_id: u32, at: &str) -> Result<Option<u32>, OffsetError> {
        let (_, ty) = self.strip(type_id, at)?;
        Ok(ty.filter(|t| t.kind == Kind::Int).and_then(|t| {
            let encoding = t.word(0);
            let (bits, offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
            (bits != t.size_or_type.saturating_mul(8) || offset != 0).then_some(bits)
        }))
    }

    /// The struct/union that a member of type `type_id` is, for the next step of a path.
    fn composite_of(&self, type_id: u32, at: &str) -> Result<u32, OffsetError> {
        let (id, ty) = self.strip(type_id, at)?;
        let Some(ty) = ty else {
            return Err(OffsetError::NotComposite {
                path: at.into(),
                kind: "void",
            });
        };
        match ty.kind {
            Kind::Struct | Kind::Union => Ok(id),
            Kind::Fwd => self.definition_of(ty, at),
            kind => Err(OffsetError::NotComposite {
                path: at.into(),
                kind: kind.name(),
            }),
        }
    }

    /// The one definition a FWD stands for.
    fn definition_of(&self, fwd: RawType<'_>, at: &str) -> Result<u32, OffsetError> {
        let want = if fwd.kind_flag {
            Kind::Union
        } else {
            Kind::Struct
        };
        let name = String::from_utf8_lossy(self.name(fwd.name_off)).into_owned();
        let mut defs = self
            .named(&name)
            .iter()
            .copied()
            .filter(|&id| self.ty(id).is_some_and(|t| t.kind == want));
        match (defs.next(), defs.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(OffsetError::OnlyDeclared { name }),
            (Some(_), Some(_)) => Err(OffsetError::Ambiguous {
                name,
                path: at.into(),
            }),
        }
    }

    /// Follows typedefs and qualifiers from `type_id`; returns the id reached and its record
    /// (`None` for void).
    fn strip(&self, mut type_id: u32, at: &str) -> Result<(u32, Option<RawType<'_>>), OffsetError> {
        for _ in 0..MAX_DEPTH {
            match self.ty(type_id) {
                Some(ty) if ty.kind.is_modifier() => type_id = ty.size_or_type,
                ty => return Ok((type_id, ty)),
            }
        }
        Err(OffsetError::TooDeep { path: at.into() })
    }

    /// Bytes in type `type_id`.
    fn size_of(&self, type_id: u32, at: &str, depth: u32) -> Result<u32, OffsetError> {
        if depth > MAX_DEPTH {
            return Err(OffsetError::TooDeep { path: at.into() });
        }
        let (_, ty) = self.strip(type_id, at)?;
        let no_size = |kind| OffsetError::NoSize {
            path: at.into(),
            kind,
        };
        let ty = ty.ok_or_else(|| no_size("void"))?;
        match ty.kind {
            Kind::Int | Kind::Enum | Kind::Enum64 | Kind::Float | Kind::Struct | Kind::Union => {
                Ok(ty.size_or_type)
            }
            Kind::Ptr => Ok(self.pointer_size),
            Kind::Array => self
                .size_of(ty.word(0), at, depth + 1)?
                .checked_mul(ty.word(2))
                .ok_or_else(|| OffsetError::Overflow { path: at.into() }),
            kind => Err(no_size(kind.name())),
        }
    }
}

/// `name.a.b` for error messages.
fn dotted(name: &str, path: &[&str]) -> String {
    std::iter::once(name)
        .chain(path.iter().copied())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
#[path = "offsets_tests.rs"]
mod tests;
