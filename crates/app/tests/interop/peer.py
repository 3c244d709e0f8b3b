"""A Python service built on mq.py (the helper our users started from), for the
wire-compatibility test.

    peer.py publish ROUTING_KEY DATA_JSON        publish_event(ROUTING_KEY, DATA)
    peer.py consume QUEUE BINDING COUNT TIMEOUT  print COUNT events (JSON lines) then exit

AMQP_URL, MQ_EXCHANGE and SERVICE_NAME come from the environment, as mq.py expects.
"""
import json
import queue
import sys
import time

import mq


def main():
    if sys.argv[1] == "publish":
        mq.publish_event(sys.argv[2], json.loads(sys.argv[3]))
        return 0
    if sys.argv[1] == "consume":
        q, binding, count, timeout = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        seen = queue.Queue()
        mq.start_consumer(queue=q, bindings=[binding], on_event=seen.put)
        deadline = time.time() + timeout
        for _ in range(count):
            left = deadline - time.time()
            if left <= 0:
                return 1
            try:
                event = seen.get(timeout=left)
            except queue.Empty:
                return 1
            print(json.dumps(event), flush=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
