"""Generate src/hare/amqp/spec.py from the machine-readable AMQP 0-9-1 spec.

Usage: python tools/gen_spec.py [../shared/spec/amqp-rabbitmq-0.9.1.json] [src/hare/amqp/spec.py]

The spec file itself is never committed; the generated module is, with the spec's copyright notice.
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT.parent / "shared" / "spec" / "amqp-rabbitmq-0.9.1.json"
DEFAULT_OUT = ROOT / "src" / "hare" / "amqp" / "spec.py"

PY_TYPES = {
    "octet": "int",
    "short": "int",
    "long": "int",
    "longlong": "int",
    "timestamp": "int",
    "shortstr": "str",
    "longstr": "bytes",
    "bit": "bool",
    "table": "dict[str, Any] | None",
}
ZERO = {"octet": 0, "short": 0, "long": 0, "longlong": 0, "timestamp": 0, "shortstr": "",
        "longstr": b"", "bit": False, "table": None}
FIXED = {"octet": ("B", 1), "short": ("H", 2), "long": ("I", 4), "longlong": ("Q", 8),
         "timestamp": ("Q", 8)}


def pyname(name: str) -> str:
    n = name.replace("-", "_")
    return n + "_" if keyword.iskeyword(n) else n


def camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("-"))


def resolve(arg: dict, domains: dict[str, str]) -> str:
    t = arg.get("type") or arg["domain"]
    while t in domains and domains[t] != t:
        t = domains[t]
    return t


def default_of(arg: dict, typ: str) -> object:
    if "default-value" in arg:
        v = arg["default-value"]
        if typ == "longstr" and isinstance(v, str):
            return v.encode()
        if typ == "table":
            return None
        return v
    return ZERO[typ]


WIRE_CODES = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q",
              "shortstr": "s", "longstr": "S", "table": "F"}


def wire_layout(fields: list[tuple[str, str]]) -> str:
    """The method's argument layout, one letter per wire field ("b" for an octet of packed bits)."""
    out = []
    i = 0
    while i < len(fields):
        if fields[i][1] == "bit":
            n = 0
            while i < len(fields) and fields[i][1] == "bit" and n < 8:
                n += 1
                i += 1
            out.append("b")
            continue
        out.append(WIRE_CODES[fields[i][1]])
        i += 1
    return "".join(out)


def gen_decode(fields: list[tuple[str, str]], content: bool) -> list[str]:
    # RabbitMQ checks that the short strings of methods without content are UTF-8 (not those of
    # basic.publish and the other content-carrying methods, for speed); the arguments must fill
    # the frame exactly.
    string = "_str" if content else "_ustr"
    lines = ["    @classmethod", "    def decode(cls, buf: bytes | memoryview, o: int) -> Self:",
             "        self = cls.__new__(cls)"]
    i = 0
    while i < len(fields):
        name, typ = fields[i]
        if typ == "bit":
            bits = []
            while i < len(fields) and fields[i][1] == "bit" and len(bits) < 8:
                bits.append(fields[i][0])
                i += 1
            lines.append("        b = buf[o]")
            lines.append("        o += 1")
            for n, bname in enumerate(bits):
                lines.append(f"        self.{bname} = bool(b & {1 << n})")
            continue
        if typ in FIXED:
            fmt, size = FIXED[typ]
            lines.append(f"        (self.{name},) = _U{fmt}(buf, o)")
            lines.append(f"        o += {size}")
        elif typ == "shortstr":
            lines.append("        n = buf[o]")
            lines.append(f"        self.{name} = {string}(buf, o + 1, n)")
            lines.append("        o += 1 + n")
        elif typ == "longstr":
            lines.append("        (n,) = _UI(buf, o)")
            lines.append(f"        self.{name} = bytes(buf[o + 4 : o + 4 + n])")
            lines.append("        o += 4 + n")
        elif typ == "table":
            lines.append(f"        self.{name}, o = decode_table(buf, o)")
        i += 1
    lines.append("        if o != len(buf):")
    lines.append("            raise SyntaxFault(f'{cls.NAME} arguments malformed')")
    lines.append("        return self")
    return lines


def gen_encode(cid: int, mid: int, fields: list[tuple[str, str]]) -> list[str]:
    head = (cid << 16 | mid).to_bytes(4, "big")
    lines = ["    def encode(self) -> bytes:"]
    parts = [repr(head)]
    i = 0
    while i < len(fields):
        name, typ = fields[i]
        if typ == "bit":
            bits = []
            while i < len(fields) and fields[i][1] == "bit" and len(bits) < 8:
                bits.append(fields[i][0])
                i += 1
            expr = " | ".join(f"({1 << n} if self.{b} else 0)" for n, b in enumerate(bits))
            parts.append(f"_PB({expr})")
            continue
        if typ in FIXED:
            parts.append(f"_P{FIXED[typ][0]}(self.{name})")
        elif typ == "shortstr":
            parts.append(f"_shortstr(self.{name})")
        elif typ == "longstr":
            parts.append(f"_longstr(self.{name})")
        elif typ == "table":
            parts.append(f"encode_table(self.{name})")
        i += 1
    lines.append("        return b''.join((" + ", ".join(parts) + ",))")
    return lines


UTF8_HELPERS = """\
def _ustr(buf: bytes | memoryview, o: int, n: int) -> str:
    if o + n > len(buf):
        raise SyntaxFault('short string truncated')
    raw = bytes(buf[o : o + n])
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        if not erlang_utf8(raw):
            raise Utf8Fault() from None
        return raw.decode('utf-8', 'surrogateescape')  # surrogates, or above U+10FFFF


def erlang_utf8(raw: bytes) -> bool:
    \"\"\"Whether RabbitMQ (xmerl_ucs:from_utf8) takes ``raw`` as UTF-8: like Python's strict codec,
    but surrogates and code points up to U+1FFFFF (four octets) pass.\"\"\"
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC0 <= c < 0xE0:
            size, value, least = 2, c & 0x1F, 0x80
        elif 0xE0 <= c < 0xF0:
            size, value, least = 3, c & 0x0F, 0x800
        elif 0xF0 <= c < 0xF8:
            size, value, least = 4, c & 0x07, 0x10000
        else:
            return False
        if i + size > n:
            return False
        for k in range(i + 1, i + size):
            if raw[k] & 0xC0 != 0x80:
                return False
            value = value << 6 | raw[k] & 0x3F
        if value < least:
            return False
        i += size
    return True


""".splitlines()

LAYOUT_HELPER = """\
_WIRE_FIXED = {'B': 1, 'H': 2, 'I': 4, 'Q': 8, 'b': 1}


def layout_ok(cls: type[Method], buf: bytes | memoryview, o: int) -> bool:
    \"\"\"Whether the arguments at ``buf[o:]`` have ``cls``'s layout and fill ``buf`` exactly: every
    length in range, nothing left over (field tables are not looked into).\"\"\"
    n = len(buf)
    for code in cls.WIRE:
        size = _WIRE_FIXED.get(code)
        if size is None:
            if code == 's':
                if o >= n:
                    return False
                size = 1 + buf[o]
            else:
                if o + 4 > n:
                    return False
                size = 4 + _UI(buf, o)[0]
        o += size
        if o > n:
            return False
    return o == n


""".splitlines()


def generate(spec: dict) -> str:
    domains = {d[0]: d[1] for d in spec["domains"]}
    out: list[str] = []
    out.append('"""AMQP 0-9-1 methods and constants (with RabbitMQ\'s extensions).')
    out.append("")
    out.append("GENERATED by tools/gen_spec.py from amqp-rabbitmq-0.9.1.json: do not edit.")
    out.append("")
    out.extend(line.rstrip() for line in spec["copyright"])
    out.append('"""')
    out.append("")
    out.append("# ruff: noqa")
    out.append("from __future__ import annotations")
    out.append("")
    out.append("import struct")
    out.append("from typing import Any, ClassVar, Self")
    out.append("")
    out.append("from .errors import SyntaxFault, Utf8Fault")
    out.append("from .table import decode_table, encode_table")
    out.append("")
    for fmt in "BHIQ":
        out.append(f"_U{fmt} = struct.Struct('>{fmt}').unpack_from")
        out.append(f"_P{fmt} = struct.Struct('>{fmt}').pack")
    out.append("")
    out.append("")
    out.append("def _str(buf: bytes | memoryview, o: int, n: int) -> str:")
    out.append("    if o + n > len(buf):")
    out.append("        raise SyntaxFault('short string truncated')")
    out.append("    return bytes(buf[o : o + n]).decode('utf-8', 'surrogateescape')")
    out.append("")
    out.append("")
    out.extend(UTF8_HELPERS)
    out.append("def _shortstr(s: str) -> bytes:")
    out.append("    b = s.encode('utf-8', 'surrogateescape')")
    out.append("    if len(b) > 255:")
    out.append("        raise ValueError('short string longer than 255 bytes')")
    out.append("    return _PB(len(b)) + b")
    out.append("")
    out.append("")
    out.append("def _longstr(b: bytes) -> bytes:")
    out.append("    return _PI(len(b)) + b")
    out.append("")
    out.append("")
    out.append("PROTOCOL_HEADER = b'AMQP\\x00\\x00\\x09\\x01'")
    for c in spec["constants"]:
        out.append(f"{c['name'].replace('-', '_')} = {c['value']}")
    out.append("")
    out.append("")
    out.append("class Method:")
    out.append('    """Base of every generated method class."""')
    out.append("")
    out.append("    __slots__ = ()")
    out.append("    CLASS_ID: ClassVar[int]")
    out.append("    METHOD_ID: ClassVar[int]")
    out.append("    INDEX: ClassVar[int]")
    out.append("    NAME: ClassVar[str]")
    out.append("    SYNCHRONOUS: ClassVar[bool]")
    out.append("    CONTENT: ClassVar[bool]")
    out.append("    FIELDS: ClassVar[tuple[str, ...]]")
    out.append("    WIRE: ClassVar[str]  # argument layout: B H I Q, s shortstr, S longstr, F table, b bits")
    out.append("")
    out.append("    @classmethod")
    out.append("    def decode(cls, buf: bytes | memoryview, o: int) -> Self:")
    out.append("        raise NotImplementedError")
    out.append("")
    out.append("    def encode(self) -> bytes:")
    out.append("        raise NotImplementedError")
    out.append("")
    out.append("    def __eq__(self, other: object) -> bool:")
    out.append("        return type(self) is type(other) and all(")
    out.append("            getattr(self, f) == getattr(other, f) for f in self.FIELDS)")
    out.append("")
    out.append("    def __repr__(self) -> str:")
    out.append("        args = ', '.join(f'{f}={getattr(self, f)!r}' for f in self.FIELDS)")
    out.append("        return f'{type(self).__name__}({args})'")
    out.append("")
    out.append("")
    index: list[tuple[int, str]] = []
    props = None
    for cls in spec["classes"]:
        if cls["name"] == "basic":
            props = cls["properties"]
        for m in cls["methods"]:
            cname = camel(cls["name"]) + camel(m["name"])
            fields = [(pyname(a["name"]), resolve(a, domains)) for a in m["arguments"]]
            defaults = [default_of(a, t) for a, (_, t) in zip(m["arguments"], fields, strict=True)]
            idx = cls["id"] << 16 | m["id"]
            index.append((idx, cname))
            out.append(f"class {cname}(Method):")
            out.append(f"    __slots__ = {tuple(f for f, _ in fields)!r}")
            out.append(f"    CLASS_ID = {cls['id']}")
            out.append(f"    METHOD_ID = {m['id']}")
            out.append(f"    INDEX = {idx:#x}")
            out.append(f"    NAME = {cls['name'] + '.' + m['name']!r}")
            out.append(f"    SYNCHRONOUS = {bool(m.get('synchronous'))}")
            out.append(f"    CONTENT = {bool(m.get('content'))}")
            out.append(f"    FIELDS = {tuple(f for f, _ in fields)!r}")
            out.append(f"    WIRE = {wire_layout(fields)!r}")
            out.append("")
            if fields:
                sig = ", ".join(f"{f}: {PY_TYPES[t]} = {d!r}"
                                for (f, t), d in zip(fields, defaults, strict=True))
                out.append(f"    def __init__(self, {sig}) -> None:")
                for f, _ in fields:
                    out.append(f"        self.{f} = {f}")
                out.append("")
            out.extend(gen_decode(fields, bool(m.get("content"))))
            out.append("")
            out.extend(gen_encode(cls["id"], m["id"], fields))
            out.append("")
            out.append("")
    out.extend(LAYOUT_HELPER)
    out.append("METHODS: dict[int, type[Method]] = {")
    for idx, cname in index:
        out.append(f"    {idx:#x}: {cname},")
    out.append("}")
    out.append("")
    assert props is not None
    out.append("# Basic content properties in wire order: (name, type); flag bit 15 is the first.")
    out.append("BASIC_PROPERTIES: tuple[tuple[str, str], ...] = (")
    for p in props:
        out.append(f"    ({pyname(p['name'])!r}, {resolve(p, domains)!r}),")
    out.append(")")
    out.append("")
    return "\n".join(out)


def main() -> None:
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC
    out_path = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    spec = json.loads(spec_path.read_text())
    out_path.write_text(generate(spec))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
