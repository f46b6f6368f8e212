"""Capabilities for the MCP server example (examples/mcp_server.toml lists them by import path).

Each is a fully typed host function; the server grants them to the guest code it runs.
"""

from __future__ import annotations

from sandbox import capability
from sandbox.secrets import SecretValue

_CITIES = {"Paris": 21, "Oslo": 12, "Lima": 19, "Cairo": 31}


@capability
def get_weather(city: str) -> dict:
    """Current weather for a city: {"city": str, "temp": degrees Celsius}. Raises ValueError for unknown cities."""
    if city not in _CITIES:
        raise ValueError(f"unknown city {city!r}; known: {', '.join(sorted(_CITIES))}")
    return {"city": city, "temp": _CITIES[city]}


@capability
def get_forecast(city: str, api_key: SecretValue) -> dict:
    """Tomorrow's forecast for a city. Pass secrets.weather_api_key as api_key."""
    key = api_key.reveal()  # a real capability would send it to the weather API here
    if not key:
        raise ValueError("no API key")
    return {"city": city, "high": _CITIES.get(city, 20) + 2, "low": _CITIES.get(city, 20) - 6}


@capability
def delete_file(path: str) -> str:
    """Delete a file on the host. (examples/mcp_policy.toml denies every call.)"""
    return f"would delete {path}"  # never reached in the example: the policy refuses the call first
