"""WSGI app that tests/real_servers.rs runs under gunicorn, directly and behind the proxy.

Answers with what a client compares on both paths: redirects (with a body and empty), empty
responses (201, 204, 304), a streamed chunked body, a POST echo (body digest, form, JSON and
the framing the app received), a gzip body and cookies. Echoes no header the proxy may add.
"""
import gzip
import hashlib
import json
import time

from flask import Flask, Response, redirect, request

app = Flask(__name__)


@app.route("/get")
def get():
    return {"args": request.args.to_dict(), "method": request.method}


@app.route("/redirect/<int:n>")
def redirect_chain(n):
    # Flask's redirect has a small HTML body; the Location is relative.
    return redirect(f"/redirect/{n - 1}" if n > 1 else "/get")


@app.route("/redirect-empty/<int:n>")
def redirect_empty(n):
    target = f"/redirect-empty/{n - 1}" if n > 1 else "/get"
    return Response(b"", status=302, headers={"Location": target})


@app.route("/status/<int:code>", methods=["GET", "POST", "PUT", "DELETE"])
def status(code):
    return Response(b"", status=code)


@app.route("/created", methods=["POST"])
def created():
    request.get_data()
    return Response(b"", status=201, headers={"Location": "/get"})


@app.route("/stream/<int:n>")
def stream(n):
    def lines():
        for i in range(n):
            yield json.dumps({"line": i, "pad": "x" * (i * 7)}) + "\n"

    # No length: gunicorn sends it chunked.
    return Response(lines(), mimetype="application/x-ndjson")


@app.route("/drip")
def drip():
    def chunks():
        for i in range(5):
            time.sleep(0.05)
            yield f"drip {i}\n"

    return Response(chunks(), mimetype="text/plain")


@app.route("/echo", methods=["POST", "PUT", "PATCH"])
def echo():
    body = request.get_data(cache=True)
    out = {
        "method": request.method,
        "len": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_type": request.headers.get("Content-Type"),
        "content_length": request.headers.get("Content-Length"),
        "transfer_encoding": request.headers.get("Transfer-Encoding"),
        "form": request.form.to_dict(flat=False),
        "json": request.get_json(silent=True),
    }
    return Response(json.dumps(out, sort_keys=True), mimetype="application/json")


@app.route("/gzip")
def gzipped():
    raw = ("compressible line of text\n" * 400).encode()
    body = gzip.compress(raw, mtime=0)
    return Response(body, mimetype="text/plain", headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})


@app.route("/cookies/set")
def cookies_set():
    resp = redirect("/cookies")
    resp.set_cookie("session", "abc123", httponly=True)
    resp.set_cookie("theme", "dark", path="/")
    return resp


@app.route("/cookies")
def cookies():
    return dict(sorted(request.cookies.items()))


@app.route("/etag")
def etag():
    if request.headers.get("If-None-Match") == '"v1"':
        return Response(status=304, headers={"ETag": '"v1"'})
    return Response(b"tagged body\n", mimetype="text/plain", headers={"ETag": '"v1"', "Cache-Control": "no-cache"})
