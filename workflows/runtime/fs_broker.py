"""kombu's filesystem transport (the embedded broker), with atomic message writes.

kombu 5.x writes a message file in place: open (the file now exists, empty), lock, write. A
consumer polling the folder may move and read it between the open and the write, find it empty,
fail to decode it and delete it: the message is lost and the consumer restarts. (The lock is
advisory; the reader never takes it.) Here a message is written under a name no queue matches
and renamed into place, so a reader sees the whole file or nothing. Selected in
`celeryconfig.py` with `broker_transport` when the broker URL is `filesystem://`.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's filesystem Channel names AbstractChannel._put's `message` argument `payload`: no name suits both
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # "<queue>.msg.part": never taken for a message of <queue>
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
