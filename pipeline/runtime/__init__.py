"""The pipeline's processes from the inside (internal: no stable API): the message
protocol, the roles (source, stage, sink), the one process body they share, flow
control, version boards, checkpoints and replay."""
