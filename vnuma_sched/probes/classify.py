"""Pure functions over probe data: the migration cause and avoidability decisions
(mirrors of bpf/migrate.bpf.c), interval deltas, matrices and per-node rows."""

from vnuma_sched.probes import events as E


def migration_cause(waking_hit, numa_hit, balance_idle, dest_cpu, cur_cpu):
    """The cause migrate.bpf.c assigns; balance_idle is None outside load balancing."""
    if waking_hit:
        return "wake"
    if numa_hit:
        return "numa"
    if balance_idle is not None:
        if balance_idle == E.IDLE_NEWLY:
            return "newidle"
        return "nohz" if dest_cpu != cur_cpu else "periodic"
    return "other"


def balance_idle_kind(value, version):
    """'newidle' | 'idle' | 'busy' for load_balance()'s idle argument on a kernel version."""
    if value == E.IDLE_NEWLY:
        return "newidle"
    cpu_idle = E.CPU_IDLE_ENUM.get(tuple(version[:2]), 1 if tuple(version[:2]) >= (6, 6) else 0)
    return "idle" if value == cpu_idle else "busy"


def delta(prev, cur):
    """cur - prev over nested dicts/lists of numbers (counters only grow)."""
    if isinstance(cur, dict):
        return {k: delta(prev.get(k) if isinstance(prev, dict) else None, v)
                for k, v in cur.items()}
    if isinstance(cur, list):
        if prev is None or len(prev) != len(cur):
            prev = [None] * len(cur)
        return [delta(p, c) for p, c in zip(prev, cur)]
    if isinstance(cur, (int, float)) and not isinstance(cur, bool):
        return cur - (prev or 0)
    return cur


def unflatten_matrix(flat, max_nodes, nodes):
    """[cause][dest_idle][src][dst] flat counts -> {cause: {"idle"|"busy": n x n}}."""
    out = {}
    for c, cause in enumerate(E.CAUSE_NAMES):
        out[cause] = {}
        for idle, label in ((0, "busy"), (1, "idle")):
            base = (c * 2 + idle) * max_nodes * max_nodes
            out[cause][label] = [[flat[base + s * max_nodes + d] for d in range(nodes)]
                                 for s in range(nodes)]
    return out


def matrix_total(matrix, causes=None):
    """n x n sum over causes (and idle/busy)."""
    causes = causes or list(matrix)
    n = len(next(iter(matrix.values()))["busy"])
    return [[sum(matrix[c][k][s][d] for c in causes for k in ("busy", "idle"))
             for d in range(n)] for s in range(n)]


def cross_node(matrix, causes=None):
    total = matrix_total(matrix, causes)
    return sum(v for s, row in enumerate(total) for d, v in enumerate(row) if s != d)


def same_node(matrix, causes=None):
    total = matrix_total(matrix, causes)
    return sum(total[i][i] for i in range(len(total)))


def by_cause(matrix):
    """{cause: {"cross": n, "same": n, "to_idle": n}}."""
    out = {}
    for cause in matrix:
        idle = matrix[cause]["idle"]
        out[cause] = {"cross": cross_node(matrix, [cause]), "same": same_node(matrix, [cause]),
                      "to_idle": sum(map(sum, idle))}
    return out


def node_cpu_slots(topology, max_cpus, max_nodes, max_node_cpus):
    """What the migrate probe's node_cpus map holds: {node * max_node_cpus + i: (i-th
    CPU of the node) + 1}; a 0 (absent) entry ends a node's list. Nodes and CPUs the
    maps have no room for are left out (node_of() in the probe reads them as node 0)."""
    out = {}
    for node in topology.nodes:
        if node.id < max_nodes:
            cpus = sorted(c for c in node.cpus if c < max_cpus)[:max_node_cpus]
            out.update({node.id * max_node_cpus + i: cpu + 1 for i, cpu in enumerate(cpus)})
    return out


def is_avoidable(orig_cpu, dest_cpu, cpu_node, node_cpus, idle, allowed):
    """The avoidability decision of migrate.bpf.c, on its maps' contents: a move to
    another node while a CPU of the previous node other than the destination was idle
    and in the task's allowed mask (an int, bit n = CPU n). None for a same-node move.
    cpu_node: {cpu: node}; node_cpus: {node: [cpus]}; idle: {cpu: bool}."""
    src = cpu_node.get(orig_cpu, 0)
    if src == cpu_node.get(dest_cpu, 0):
        return None
    return any(c != dest_cpu and idle.get(c) and allowed >> c & 1
               for c in node_cpus.get(src, ()))


def unflatten_cause_matrix(flat, max_nodes, nodes):
    """[cause][src][dst] flat counts -> {cause: n x n}."""
    out = {}
    for c, cause in enumerate(E.CAUSE_NAMES):
        base = c * max_nodes * max_nodes
        out[cause] = [[flat[base + s * max_nodes + d] for d in range(nodes)]
                      for s in range(nodes)]
    return out


def cause_matrix_total(matrix, causes=None):
    """n x n sum of a {cause: n x n} matrix over causes."""
    causes = causes or list(matrix)
    n = len(next(iter(matrix.values())))
    return [[sum(matrix[c][s][d] for c in causes) for d in range(n)] for s in range(n)]


def off_diagonal(square):
    return sum(v for s, row in enumerate(square) for d, v in enumerate(row) if s != d)


def avoidable_metrics(avoidable, seen):
    """cross_node_avoidable (total and per cause) and cross_node_unchecked from the
    migrate probe's avoidable {cause: n x n} and avoid_seen counters."""
    m = {"cross_node_avoidable": off_diagonal(cause_matrix_total(avoidable)),
         "cross_node_unchecked": (seen[E.SEEN_CROSS_UNREADABLE] +
                                  seen[E.SEEN_TASK_UNREADABLE])}
    for cause, square in avoidable.items():
        m[f"cross_node_avoidable.{cause}"] = off_diagonal(square)
    return m


def node_rows(topology, per_cpu_columns, per_cpu=False):
    """Rows per node (sums over its CPUs) or per CPU, from {column: [value per cpu]}."""
    cols = list(per_cpu_columns)
    rows = []
    groups = ([(f"cpu{c}", [c]) for c in topology.cpus] if per_cpu else
              [(f"node{n.id}", list(n.cpus)) for n in topology.nodes])
    for label, cpus in groups:
        row = [label]
        for col in cols:
            values = per_cpu_columns[col]
            row.append(sum(values[c] for c in cpus if c < len(values)))
        rows.append(row)
    return cols, rows
