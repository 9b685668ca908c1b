"""The outsider's app: every site's ClientApp is asked for rows of its private labels."""

from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    asks = [
        Message(
            RecordDict({"ask": ConfigRecord({"rows": context.run_config["rows"]})}),
            dst_node_id=node,
            message_type="query",
        )
        for node in grid.get_node_ids()
    ]
    for reply in grid.send_and_receive(asks, timeout=60):
        print("outsider got:", reply.content["rows"]["y"] if reply.has_content() else reply.error)


@client.query()
def steal(msg: Message, context: Context) -> Message:
    site = Path(str(context.node_config["site-dir"]))
    (site.parent / f"stolen-{site.name}").write_text("the outsider's code ran at this site\n")
    labels = np.load(site / "labeled.npz")["y"][: int(msg.content["ask"]["rows"])]
    return Message(
        RecordDict({"rows": ConfigRecord({"y": [int(v) for v in labels]})}), reply_to=msg
    )
