"""Drives POST /mcp with the stock MCP client (the `mcp` package): initializes,
lists the tools, then calls each tool named on stdin and prints what it saw as JSON.

Usage: mcp_client.py URL TOKEN < calls.json, where calls.json is a list of
{"name": ..., "arguments": {...}}. An argument whose value is the string "$session"
is given the `sessionId` of the last session `create_session` opened. Prints
{"serverInfo", "tools", "results"}, the results as the client parsed them
(camelCase, as on the wire).
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str, calls: list) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(120.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                tools = await session.list_tools()
                results = []
                opened = None
                for call in calls:
                    arguments = call.get("arguments")
                    if arguments is not None:
                        arguments = {k: opened if v == "$session" else v for k, v in arguments.items()}
                    result = await session.call_tool(call["name"], arguments)
                    if call["name"] == "create_session" and not result.is_error:
                        opened = result.structured_content["sessionId"]
                    results.append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
                return {
                    "serverInfo": init.server_info.model_dump(mode="json", by_alias=True),
                    "tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools.tools],
                    "results": results,
                }


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], sys.argv[2], json.load(sys.stdin)))
    json.dump(out, sys.stdout)
