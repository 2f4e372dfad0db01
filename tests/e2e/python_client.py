"""An MCP client with no auth code of its own (the MCP Python SDK), through bearerd.

    python3 python_client.py URL SUBJECT

Initializes, lists tools and calls the first one, naming the end user in bearerd's subject
header. Prints one JSON line: {"ok": true, "tools": [...]} when it got through, or the MCP
error it surfaced ({"code", "message", "data"}), e.g. bearerd's URL elicitation for a user
who has not connected yet.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


def find_mcp_error(err):
    """The McpError inside an exception (anyio task groups wrap them)."""
    if isinstance(err, McpError):
        return err
    for inner in getattr(err, "exceptions", ()):
        found = find_mcp_error(inner)
        if found is not None:
            return found
    cause = err.__cause__ or err.__context__
    return find_mcp_error(cause) if cause is not None else None


async def main(url, subject):
    headers = {"x-bearerd-subject": subject}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            if tools.tools:
                await session.call_tool(tools.tools[0].name, {})
            return {"ok": True, "tools": [t.name for t in tools.tools]}


if __name__ == "__main__":
    try:
        out = asyncio.run(main(sys.argv[1], sys.argv[2]))
    except BaseException as err:  # noqa: BLE001 - report what the SDK surfaced
        found = find_mcp_error(err)
        if found is None:
            raise
        out = {
            "code": found.error.code,
            "message": found.error.message,
            "data": found.error.data,
        }
    print(json.dumps(out))
