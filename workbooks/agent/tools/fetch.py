"""fetch {url, headers?}: HTTP GET a public page for the model, as text.

Every hop goes through the SSRF guard (`netguard`): the URL is checked, the host resolved once and
every answer checked, and the connection goes to one of exactly those addresses (a trio socket to
the IP, TLS with the host name for SNI and certificate checks, HTTP/1.1 by `h11`), so no second
lookup can rebind it. Redirects (301/302/303/307/308) are followed by hand, at most 5, each
re-checked; custom headers and URL credentials are not sent on to another origin. 20 s for the
whole fetch (less when the loop's deadline is nearer); at most 1 MiB of body is read (the rest is
not downloaded; gzip/deflate are decoded within the same cap). HTML becomes text; the answer is the
first 4000 characters.

`{{secret:KEY}}` in the URL or a header value is resolved only here, when the request is built;
the transcript keeps the placeholder and the answer is redacted. Results: the text, or
"fetch blocked: …", "fetch failed: HTTP <n>", "fetch error: …" (the original's strings).
"""

from __future__ import annotations

import base64
import ssl
import zlib

import h11
import trio

from workbooks.agent.tools.base import ToolContext, ToolResult
from workbooks.agent.tools.common import answer, shown, time_left
from workbooks.agent.tools.htmltext import html_to_text, looks_like_html
from workbooks.agent.tools.netguard import Refused, Target, addresses, parse

TIMEOUT_S = 20.0
MAX_BODY = 1 << 20
MAX_TEXT = 4000
MAX_REDIRECTS = 5
MAX_HEADER_BYTES = 64 << 10
USER_AGENT = "Mozilla/5.0 (WorkbooksAgent)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade",
                         "accept-encoding", "keep-alive", "proxy-connection", "trailer"})
TEXTUAL = ("text/", "json", "xml", "javascript", "csv", "yaml", "toml")

_ssl_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body


async def _connect(t: Target, allow_hosts) -> trio.abc.Stream:
    last: OSError | None = None
    for family, sockaddr in await addresses(t, allow_hosts):
        try:
            sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        except OSError as e:  # e.g. no IPv6 on this host
            last = e
            continue
        try:
            await sock.connect(sockaddr)
        except OSError as e:
            sock.close()
            last = e
            continue
        except BaseException:  # cancelled (the deadline): the socket is not left open
            sock.close()
            raise
        stream: trio.abc.Stream = trio.SocketStream(sock)
        if t.scheme == "https":
            tls = trio.SSLStream(stream, tls_context(), server_hostname=t.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as e:
                await trio.aclose_forcefully(stream)
                cause = e.__cause__ or e
                why = getattr(cause, "reason", None) or str(cause)
                if getattr(cause, "verify_message", None):
                    why = f"{why} ({cause.verify_message})"
                raise Refused(f"fetch error: TLS with {t.host} failed: {why}", "tls") from None
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = tls
        return stream
    why = (last.strerror or str(last)) if last else "no address"
    raise Refused(f"fetch error: cannot connect to {t.host}: {why}", "connect")


def _decoder(encoding: str):
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj()
    raise Refused(f"fetch error: unsupported content encoding ({enc[:40]})", "encoding")


async def exchange(t: Target, headers: list[tuple[str, str]], allow_hosts, *, method: str = "GET", body: bytes = b"",
                   accept: str, user_agent: str, max_body: int, over_cap: str, prefix: str, coded: bool) -> Response:
    """One request to one checked target, the connection closed after it (the agent's fetch and the
    workflow `http` capability). A redirect or error status ends the read at its headers; a body past
    `max_body` (decoded) is cut there (`over_cap="cut"`) or refused (`"refuse"`). Failures are
    Refused, their texts after `prefix`, with a code when `coded`."""

    def refused(text: str, code: str) -> Refused:
        return Refused(prefix + text, code) if coded else Refused(prefix + text)

    stream = await _connect(t, allow_hosts)
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        sent = [("Host", t.host_header), ("User-Agent", user_agent), ("Accept", accept),
                ("Accept-Encoding", "gzip, deflate, identity"), ("Connection", "close")]
        if t.userinfo is not None:
            token = base64.b64encode(f"{t.userinfo[0]}:{t.userinfo[1]}".encode()).decode()
            sent.append(("Authorization", f"Basic {token}"))
        if method == "POST":
            sent.append(("Content-Length", str(len(body))))
            if not any(k.lower() == "content-type" for k, _ in headers):
                sent.append(("Content-Type", "application/json" if body[:1] in (b"{", b"[") else "text/plain; charset=utf-8"))
        sent += headers
        try:
            data = conn.send(h11.Request(method=method, target=t.target.encode("ascii"), headers=sent))
            if method == "POST" and body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeError) as e:
            raise refused(f"bad request header ({e})", "bad_args") from None
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
            raise refused(f"connection to {t.host} broke ({e.__cause__ or e})", "connect") from None
        status, rheaders, chunks, size, decoder = 0, {}, [], 0, None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise refused(f"bad response from {t.host} ({e})", "protocol") from None
            if event is h11.NEED_DATA:
                try:
                    got = await stream.receive_some(65536)
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
                    raise refused(f"connection to {t.host} broke ({e.__cause__ or e})", "connect") from None
                conn.receive_data(got)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for k, v in event.headers:
                    rheaders[k.decode("latin-1").lower()] = v.decode("latin-1")
                if status in REDIRECTS or not 200 <= status < 300:
                    break  # the body of a redirect or an error page is not needed
                decoder = _decoder(rheaders.get("content-encoding", ""))
                continue
            if isinstance(event, h11.Data):
                piece = bytes(event.data)
                if decoder is not None:
                    try:
                        piece = decoder.decompress(piece, max_body + 1 - size)
                    except zlib.error:
                        raise refused("the response's compressed body is corrupt", "encoding") from None
                chunks.append(piece)
                size += len(piece)
                if size > max_body:
                    if over_cap == "refuse":
                        raise refused(f"the response body is over {max_body} bytes", "too_large")
                    break  # the cap: nothing more is downloaded
                continue
            break  # EndOfMessage, ConnectionClosed
        if status == 0:
            raise refused(f"{t.host} closed the connection without a response", "protocol")
        return Response(status, rheaders, b"".join(chunks)[:max_body])
    finally:
        await trio.aclose_forcefully(stream)


async def request(t: Target, headers: list[tuple[str, str]], allow_hosts) -> Response:
    """One GET to one checked target; the body read up to MAX_BODY (decoded), then the connection closed."""
    return await exchange(t, headers, allow_hosts, accept="text/html,text/plain;q=0.9,*/*;q=0.5",
                          user_agent=USER_AGENT, max_body=MAX_BODY, over_cap="cut", prefix="fetch error: ", coded=True)


def _headers_arg(ctx: ToolContext, raw) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise Refused("fetch error: `headers` must be an object of string values", "bad_args")
    out = []
    for k, v in raw.items():
        if k.strip().lower() in HOP_HEADERS:
            continue
        out.append((k.strip(), ctx.secrets.resolve(v)))
    return out


def _text_of(resp: Response) -> str:
    ctype = resp.headers.get("content-type", "").lower()
    charset = "utf-8"
    for param in ctype.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name == "charset" and value:
            charset = value.strip("\"' ")
    if ctype and not any(t in ctype for t in TEXTUAL):
        raise Refused(f"fetch error: not text ({ctype.split(';')[0][:60]}, {len(resp.body)} bytes)", "binary")
    try:
        body = resp.body.decode(charset, errors="replace")
    except LookupError:
        body = resp.body.decode("utf-8", errors="replace")
    text = html_to_text(body) if looks_like_html(ctype, body) else body.strip()
    return text[:MAX_TEXT]


async def fetch_text(ctx: ToolContext, url: str, headers_raw=None) -> str:
    """The page text for `url`, or Refused with the tool's answer."""
    from urllib.parse import urljoin

    custom = _headers_arg(ctx, headers_raw)
    t = parse(ctx.secrets.resolve(url))
    first_origin = t.origin
    for _hop in range(MAX_REDIRECTS + 1):
        resp = await request(t, custom if t.origin == first_origin else [], ctx.fetch_allow_hosts)
        if resp.status in REDIRECTS:
            loc = resp.headers.get("location", "").strip()
            if not loc:
                raise Refused(f"fetch failed: HTTP {resp.status}", "http_status")
            nxt = parse(urljoin(t.url, loc))
            if nxt.userinfo is None and nxt.origin == t.origin:
                nxt.userinfo = t.userinfo
            t = nxt
            continue
        if not 200 <= resp.status < 300:
            raise Refused(f"fetch failed: HTTP {resp.status}", "http_status")
        return _text_of(resp)
    raise Refused(f"fetch error: too many redirects (more than {MAX_REDIRECTS})", "redirects")


class Fetch:
    name = "fetch"
    description = (
        "HTTP GET a public URL and return its text (HTML stripped, at most 4000 characters). "
        "Internal and private addresses are refused. Optional `headers` (e.g. an API key as "
        '"Authorization": "Bearer {{secret:KEY}}" — the secret is filled in only when sending).'
    )
    parameters = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "an http(s) URL"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "optional request headers"},
        },
        "required": ["url"],
    }
    needs_exec = False

    async def __call__(self, ctx: ToolContext, args: dict) -> ToolResult:
        url = args.get("url") if isinstance(args, dict) else None
        if not isinstance(url, str) or not url.strip():
            return answer(ctx, "fetch error: no url given", 1, "bad_args")
        limit = time_left(ctx, TIMEOUT_S)
        try:
            with trio.fail_after(limit):
                text = await fetch_text(ctx, url, args.get("headers"))
        except Refused as e:
            return answer(ctx, e.text, 1, e.code)
        except trio.TooSlowError:
            return answer(ctx, f"fetch error: timed out after {limit:.0f}s ({shown(url, 200)})", 1, "timeout")
        return answer(ctx, text)


FETCH = Fetch()
