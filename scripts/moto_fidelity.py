"""What DynamoDB does that moto does not, for the calls Conveyor makes.

- TransactWriteItems with a ClientRequestToken is idempotent for 10 minutes: a retry after
  a lost answer gets the first call's outcome instead of having its conditions judged
  again (AWS: "subsequent calls with the same client token return successfully without
  making any changes"); the same token with other items is refused
  (IdempotentParameterMismatchException).

Used by moto_serial.py.
"""

import json
import time

from moto.dynamodb.responses import DynamoHandler

TOKEN_LIFETIME = 600
_answered = {}


def install():
    original = DynamoHandler.transact_write_items

    def transact_write_items(self):
        token = self.body.get("ClientRequestToken")
        if not token:
            return original(self)
        now = time.time()
        items = json.dumps(self.body.get("TransactItems"), sort_keys=True)
        for stale in [t for t, (at, _, _) in _answered.items() if now - at > TOKEN_LIFETIME]:
            del _answered[stale]
        if token in _answered:
            _, earlier_items, result = _answered[token]
            if earlier_items != items:
                from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

                raise DynamodbException(
                    ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical request.",
                )
            return result
        result = original(self)
        _answered[token] = (now, items, result)
        return result

    DynamoHandler.transact_write_items = transact_write_items
