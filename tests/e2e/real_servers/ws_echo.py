"""WebSocket echo server (the `websockets` library) for tests/real_servers.rs: each message
back as it came, text or binary. Usage: ws_echo.py PORT"""
import asyncio
import sys

import websockets


async def echo(ws, *_path):
    async for message in ws:
        await ws.send(message)


async def main(port):
    async with websockets.serve(echo, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
