"""The programming model and its runtime: App, typed topics, streams and agents.

Example:
    >>> import streams
    >>> app = streams.App("shop", broker="memory://")
    >>> orders = app.topic("orders", value_type=dict)
    >>> @app.agent(orders)
    ... async def show(stream):
    ...     async for event in stream:
    ...         print(event.key, event.value)
"""

from streams._agent import Agent, AgentError, ErrorPolicy
from streams._app import App
from streams._codec import BytesCodec, Codec, JsonCodec, StrCodec
from streams._errors import DeclarationError, DecodeError, EncodeError
from streams._event import Event
from streams._global import GlobalTable
from streams._placement import MisplacedPolicy
from streams._stream import EventStream, Stream
from streams._table import RestoreProgress, Table, TableError
from streams._topic import DEAD_LETTER_SUFFIX, Topic
from streams._windowed import ClosedWindow, WindowedTable, WindowSet
from streams._windows import Hopping, Session, Sliding, Tumbling, Window, WindowSpec

__all__ = (
    "DEAD_LETTER_SUFFIX",
    "Agent",
    "AgentError",
    "App",
    "BytesCodec",
    "ClosedWindow",
    "Codec",
    "DeclarationError",
    "DecodeError",
    "EncodeError",
    "ErrorPolicy",
    "Event",
    "EventStream",
    "GlobalTable",
    "Hopping",
    "JsonCodec",
    "MisplacedPolicy",
    "RestoreProgress",
    "Session",
    "Sliding",
    "StrCodec",
    "Stream",
    "Table",
    "TableError",
    "Topic",
    "Tumbling",
    "Window",
    "WindowSet",
    "WindowSpec",
    "WindowedTable",
)
