"""An MCP client of the 2026-07-28 revision with no auth code of its own (the MCP Python
SDK 2.x, stateless: no initialize), through bearerd.

    python3 python_client_2026.py URL SUBJECT

Calls the tool `echo` as the end user SUBJECT (bearerd's subject header). A URL
elicitation (an `input_required` result) goes to the elicitation callback, which records
it and declines. Prints one JSON line: {"protocol": "2026-07-28", "elicited": [{"url",
"message", "key"}], "result": {...}}.
"""

import asyncio
import json
import sys

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

elicited = []


async def on_elicit(ctx, params):
    if isinstance(params, types.ElicitRequestURLParams):
        elicited.append({"url": params.url, "message": params.message, "key": str(ctx.request_id)})
    return types.ElicitResult(action="decline")


async def main(url, subject):
    http = httpx2.AsyncClient(headers={"x-bearerd-subject": subject})
    transport = streamable_http_client(url, http_client=http)
    async with Client(transport, mode="2026-07-28", elicitation_callback=on_elicit) as client:
        result = await client.call_tool("echo", {"text": "from python"})
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {"protocol": client.protocol_version, "elicited": elicited, "result": dumped}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
