"""Which account a Responses API answer belongs to.

The gateway fronts one upstream key for every account, so the upstream cannot tell whose
``resp_…`` id a ``previous_response_id`` names: without this, one account could continue (and
read back) another account's conversation. Answers are remembered per account in a bounded LRU;
a continuation of an id remembered for another account is answered 404, as the upstream would
answer an unknown id. An id not remembered (evicted, or from before a restart) is passed on.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_RESPONSES = 200_000


class ResponseOwners:
    def __init__(self, capacity: int = MAX_RESPONSES) -> None:
        self.capacity = capacity
        self._owner: OrderedDict[str, str] = OrderedDict()

    def remember(self, response_id: object, account: str) -> None:
        if not isinstance(response_id, str) or not response_id:
            return
        self._owner[response_id] = account
        self._owner.move_to_end(response_id)
        if len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def foreign(self, response_id: object, account: str) -> bool:
        """True when ``response_id`` is remembered as another account's answer."""
        owner = self._owner.get(response_id) if isinstance(response_id, str) else None
        return owner is not None and owner != account

    def __len__(self) -> int:
        return len(self._owner)
