"""Executed notebooks as safe HTML: found only inside the audit store, converted with nbconvert,
then sanitized, because a strategy notebook's output is untrusted and nbconvert does not sanitize
by default (GHSA-9jmq-rx5f-8jwq).
"""
from __future__ import annotations

import copy
import re
import dataclasses
from pathlib import Path, PurePosixPath

import nh3

from lib.audit import AuditError, read_link


class NotInAuditStore(ValueError):
    """A notebook name or link that points outside the audit store (or is not a notebook)."""


def store_name(link: str, audit_url: str) -> str:
    """The name (relative path) of `link` inside the audit store `audit_url`, or NotInAuditStore.

    Accepts what the pipeline records: a local path under the store's folder, or gs://BUCKET/PREFIX/…
    when the store is in GCS. Anything else, `..` anywhere, or a non-notebook is refused."""
    if not link or "\x00" in link or "\\" in link:
        raise NotInAuditStore("not a notebook link")
    if audit_url.startswith("gs://"):
        prefix = audit_url.rstrip("/") + "/"
        if not link.startswith(prefix):
            raise NotInAuditStore(f"{link!r} is outside the audit store")
        name = link[len(prefix):]
    else:
        root = Path(audit_url).resolve()
        path = Path(link)
        if ".." in path.parts:
            raise NotInAuditStore("path traversal refused")
        # A relative link was written relative to the project root (the pipeline's working folder).
        absolute = (path if path.is_absolute() else Path.cwd() / path).resolve()
        try:
            name = absolute.relative_to(root).as_posix()
        except ValueError:
            raise NotInAuditStore(f"{link!r} is outside the audit store") from None
    return check_name(name)


def check_name(name: str) -> str:
    """A relative notebook name inside the store: no traversal, no absolute path, .ipynb only."""
    pure = PurePosixPath(name)
    if (not name or "\x00" in name or "\\" in name or pure.is_absolute() or ".." in pure.parts
            or any(p in ("", ".") for p in name.split("/")) or pure.suffix != ".ipynb"):
        raise NotInAuditStore(f"{name!r} is not a notebook name inside the audit store")
    return name


def read(audit_url: str, name: str) -> dict:
    """The notebook `name` of the audit store, parsed."""
    name = check_name(name)
    if audit_url.startswith("gs://"):
        link = audit_url.rstrip("/") + "/" + name
    else:
        root = Path(audit_url).resolve()
        path = (root / name).resolve()
        if root not in path.parents:  # a symlink out of the store
            raise NotInAuditStore(f"{name!r} is outside the audit store")
        link = str(path)
    import nbformat
    try:
        return nbformat.reads(read_link(link).decode("utf-8"), as_version=4)
    except AuditError:
        raise FileNotFoundError(name) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuditError(f"{name} is not a readable notebook: {exc}") from None


@dataclasses.dataclass
class Failure:
    cell: int  # execution count, when the cell ran
    ename: str
    evalue: str


def failure(nb: dict) -> Failure | None:
    """The failing cell of an executed notebook (papermill stops at the first error)."""
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                return Failure(cell.get("execution_count") or 0, out.get("ename", "Error"), out.get("evalue", ""))
    return None


SETTING_PARAMETERS = ("bus_url", "broker_url", "audit_url")
_SETTING_LINE = re.compile(r"^(\s*(?:%s)\s*=\s*).+$" % "|".join(SETTING_PARAMETERS), re.M)


def _for_page(nb: dict) -> dict:
    """A copy fit for a page: papermill's own banner (raw HTML with inline style, dropped by the
    sanitizer anyway) removed, since the page draws its own; and the values of the settings papermill
    injected (bus, broker, audit URLs) masked, because no setting appears on a page."""
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.get("cells", []):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "papermill-error-cell-tag" in tags:
            continue
        if "injected-parameters" in tags:
            cell["source"] = _SETTING_LINE.sub(r'\1"…"  # a setting: not shown here', cell["source"])
        cells.append(cell)
    nb["cells"] = cells
    return nb


_TAGS = set(nh3.ALLOWED_TAGS)
_ATTRIBUTES = {"*": {"class", "id", "title", "align"}, "a": {"href"}, "img": {"src", "alt", "width", "height"},
               "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
_IMAGE_DATA = ("data:image/png;base64,", "data:image/jpeg;base64,", "data:image/gif;base64,",
               "data:image/svg+xml;base64,")


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute in ("href", "src") and value.lower().startswith("data:"):
        return value if tag == "img" and attribute == "src" and value.startswith(_IMAGE_DATA) else None
    return value


def sanitize(html: str) -> str:
    """Only inert markup survives: no script, no event handler, no style, no javascript: URL; images
    only as inline raster/SVG data (an <img> never runs script)."""
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto", "data"}, attribute_filter=_attribute_filter,
                     link_rel="noopener noreferrer nofollow")


def to_html(nb: dict, show_inputs: bool = True) -> str:
    """The notebook's body as sanitized HTML (nbconvert's `basic` template: no page chrome)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic", exclude_input=not show_inputs, exclude_input_prompt=not show_inputs)
    node = nbformat.from_dict(_for_page(nb))
    body, _ = exporter.from_notebook_node(node)
    return sanitize(body)

