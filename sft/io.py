"""Atomic writes (temp file + rename): a kill never leaves a half-written artefact."""

from __future__ import annotations

import json
import os
import tempfile


def write_bytes_atomic(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str) -> list:
    """A JSON-lines file sft wrote itself (a run's logs and predictions)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def parse_jsonl(raw: bytes, *, file: str, field: str, error, objects: bool = False) -> list:
    """A user's JSON-lines bytes (`sft score`, `sft generate --input`): UTF-8 with an optional byte-order mark, split
    on \\n only (U+2028 inside a string is text), blank lines skipped; each problem is one `error` (an SftError
    class) naming the line. `objects`: every row must be a JSON object."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})", file=file, field=field,
                    fix="re-encode the file as UTF-8, e.g. iconv -t UTF-8") from e
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"line {lineno}: invalid JSON ({e.msg})", file=file, field=field) from e
        except RecursionError:
            raise error(f"line {lineno}: JSON nested too deeply to read", file=file, field=field) from None
        if objects and not isinstance(row, dict):
            raise error(f"line {lineno}: expected a JSON object", file=file, field=field)
        rows.append(row)
    return rows


def safe_name(name: str, *, file: str | None, field: str) -> str:
    """A file name taken from a spec or recipe: a plain name, so the file stays inside its output folder."""
    from .errors import RecipeError

    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\x00") \
            or name != name.strip() or name.startswith("."):
        raise RecipeError(f"{name!r} is not a plain file name", file=file, field=field,
                          fix="use letters, digits, '-' and '_' (no '/', '..' or leading '.')")
    return name


MAX_YAML_ALIASES = 1_000  # alias references in one YAML file (a recipe uses a handful, if any)
MAX_YAML_DEPTH = 100  # nesting levels (PyYAML composes recursively: 5,000 levels is a RecursionError)
MAX_YAML_NODES = 1_000_000  # nodes once aliases are expanded (a billion-laughs file has 10**9)


def _yaml_loader(path: str):
    """yaml.SafeLoader with one-line errors: a key given twice in one mapping is an error, not last-wins; alias
    references are counted and the expanded size measured before anything is built (no alias bombs)."""
    import yaml

    from .errors import RecipeError

    class _Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            self.depth = getattr(self, "depth", 0) + 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    mark = self.peek_event().start_mark
                    raise RecipeError(f"line {mark.line + 1}: values nested more than {MAX_YAML_DEPTH} levels deep",
                                      file=path, fix="flatten the structure")
                return self._compose(parent, index)
            finally:
                self.depth -= 1

        def _compose(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise RecipeError(f"more than {MAX_YAML_ALIASES} alias references (*name)", file=path,
                                      fix="write the values out, or use fewer anchors")
            return super().compose_node(parent, index)

        def construct_document(self, node):
            _check_expanded(node, path)
            return super().construct_document(node)

    def _mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise RecipeError(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value",
                                  file=path, fix="quote the key") from None
            if key in seen:
                raise RecipeError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                  f"{key_node.start_mark.line + 1})", file=path,
                                  fix="keep one of them (YAML would silently drop the first)")
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    return _Loader


def _check_expanded(root, path: str) -> None:
    """The node count of the document with every alias expanded, computed once per distinct node (aliases share
    nodes), without recursion; a self-referencing anchor is refused."""
    import yaml

    from .errors import RecipeError

    size: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            open_.discard(key)
            if size[key] > MAX_YAML_NODES:
                raise RecipeError(f"the document expands to more than {MAX_YAML_NODES:,} values (aliases of "
                                  "aliases?)", file=path, fix="write the values out, or use fewer nested aliases")
            continue
        if key in size:
            continue
        if key in open_:
            raise RecipeError("an anchor refers to itself (a recursive alias)", file=path,
                              fix="remove the self-reference")
        open_.add(key)
        stack.append((node, True))
        for k in _children(node):
            if id(k) in open_:
                raise RecipeError("an anchor refers to itself (a recursive alias)", file=path,
                                  fix="remove the self-reference")
            if id(k) not in size:
                stack.append((k, False))


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml_text(text: str, where: str):
    """A YAML value given as text (a command-line override), with read_yaml's limits."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader(where))


def read_yaml(path: str, what: str = "file"):
    """Load a YAML file (see _yaml_loader) with one-line errors."""
    import yaml

    from .errors import RecipeError

    _Loader = _yaml_loader(path)
    if not os.path.exists(path):
        raise RecipeError(f"{what} not found", file=path, fix="check the path")
    if os.path.isdir(path):
        raise RecipeError(f"{what} is a directory", file=path, fix="pass a YAML file")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return yaml.load(fh, Loader=_Loader)
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path, fix="save it as UTF-8") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"not valid YAML ({where}{problem})", file=path, fix="fix the YAML syntax") from e
    except OSError as e:
        raise RecipeError(f"cannot read {what} ({e.strerror})", file=path) from e
