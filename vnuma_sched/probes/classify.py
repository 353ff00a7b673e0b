"""Pure functions over probe data: the migration cause decision (mirror of
bpf/migrate.bpf.c), interval deltas, matrices and per-node rows."""

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
