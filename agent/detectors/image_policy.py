"""Container image evidence: look-alike names, bad namespaces, launchers and pool settings in its config."""

from __future__ import annotations

import fnmatch

from agent.detectors.base import Context
from agent.model import ContainerInfo, Evidence
from agent.signatures import match_text

ID = "image"
VERSION = 1
TITLE = "Suspicious container image"

_MINER_ONLY_ENV = ("XMRIG_", "DONATE_LEVEL")  # variable names only miners read
_POOL_LOGIN = frozenset({"POOL_USER", "POOL_PASS"})
_RULE = f"{ID}@{VERSION}"
_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def split_reference(ref: str) -> tuple[str, str, str]:
    """``[registry/][namespace/]repo[:tag][@digest]`` -> (registry, namespace, repo), lower case.

    Docker Hub references get registry ``docker.io``; official images namespace ``library``.
    """
    name = ref.strip().lower().split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    parts = name.split("/")
    registry = "docker.io"
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
    if registry in _HUB:
        registry = "docker.io"
    repo = parts[-1] if parts else ""
    namespace = "/".join(parts[:-1]) or ("library" if registry == "docker.io" else "")
    return registry, namespace, repo


def _distance_at_most_one(a: str, b: str) -> bool:
    """True when a and b differ by one edit (insert, delete, substitute or swap)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _lookalike(repo: str, ctx: Context) -> str:
    sig = ctx.signatures
    if repo in sig.official_images:
        return repo
    if len(repo) >= 5:
        for official in sig.official_images:
            if len(official) >= 5 and _distance_at_most_one(repo, official):
                return official
    return ""


def allowed(image: str, allow: tuple[str, ...]) -> bool:
    """Whether ``image`` matches one of the allow-list globs (registry, namespace or full reference)."""
    registry, namespace, repo = split_reference(image)
    full = f"{registry}/{namespace}/{repo}" if namespace else f"{registry}/{repo}"
    short = image.lower()
    for pattern in allow:
        p = pattern.lower().rstrip("/")
        if fnmatch.fnmatch(short, p) or fnmatch.fnmatch(full, p) or fnmatch.fnmatch(short.split(":")[0], p):
            return True
        if p in (registry, f"{registry}/{namespace}", namespace) or full.startswith(p + "/"):
            return True
    return False


def detect(container: ContainerInfo, ctx: Context) -> list[Evidence]:
    sig = ctx.signatures
    out: list[Evidence] = []
    image = container.image
    if image:
        registry, namespace, repo = split_reference(image)
        official_ns = registry == "docker.io" and namespace == "library"
        if (entry := sig.bad_namespaces.get(namespace)) is not None:
            out.append(Evidence("image", f"image {image} comes from namespace {namespace!r} on the bad list; source: {entry.source}", 45, _RULE))
        ref = f"{namespace}/{repo}" if namespace else repo
        if (entry := sig.bad_images.get(ref) or sig.bad_images.get(container.image_id.lower())) is not None:
            out.append(Evidence("image", f"image {image} is on the bad list; source: {entry.source}", 45, _RULE))
        if not official_ns and (official := _lookalike(repo, ctx)):
            out.append(Evidence("image", f"image {image} imitates the official image {official!r} from namespace {namespace!r}", 20, _RULE, strong=False))
        if ctx.image_allow and not allowed(image, ctx.image_allow):
            out.append(Evidence("image", f"image {image} is outside the [images] allow list", 20, _RULE, strong=False))
    words = [*container.entrypoint, *container.command]
    for word in words:
        base = word.rsplit("/", 1)[-1].strip().lower()
        if (entry := sig.launchers.get(base)) is not None:
            out.append(Evidence("image", f"entrypoint/command runs the known miner launcher {base!r}; source: {entry.source}", 35, _RULE))
            break
    labels = [f"{k}={v}" for k, v in container.labels]
    # Capped like a command line: each word, Env entry and label, then the whole, start and end kept.
    config_text = match_text([*words, *container.env, *labels])
    for pat in sig.cmdline_patterns.matching(config_text):
        if m := pat.regex.search(config_text):
            out.append(Evidence("image", f"container config: {pat.name}: {m.group(0)[:120]!r}", min(pat.weight, 40), _RULE))
            break
    env_names = sorted({e.split("=", 1)[0] for e in container.env if sig.env_var(e.split("=", 1)[0].upper()) is not None})
    if env_names:
        # A name payment apps use too (WALLET, POOL_URL...) is weak alone; a wallet address in a value is
        # the pattern match above. Names only miners set stay strong, and so does a pool login (POOL_USER or
        # POOL_PASS) beside another miner variable: the shape of a miner image's pool configuration.
        upper = {n.upper() for n in env_names}
        specific = any(n.startswith(_MINER_ONLY_ENV) for n in upper) or len(upper) >= 2 and bool(upper & _POOL_LOGIN)
        out.append(Evidence("image", f"container environment sets miner variable(s) {', '.join(env_names)}", 20, _RULE,
                            strong=specific))
    return out
