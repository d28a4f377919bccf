"""CPU time, RSS and CPU affinity of process trees, read from /proc.

CPU time is utime+stime of /proc/<pid>/stat (whole thread group, in clock
ticks), summed over every process of each tree (e.g. nginx master + workers);
stime alone is the kernel's part.
RSS is the sum of VmRSS of the same processes.

CLI: procstat.py sample PID...    -> JSON {"ticks", "sys_ticks", "rss_kb", "pids"}
     procstat.py affinity PID...  -> JSON {"<pid>/<tid> comm": "cpus", ...}
"""
import json
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the comm, so index 0 is the state."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def tree(roots):
    """The given pids plus all their living descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [int(p) for p in roots]
    while todo:
        pid = todo.pop()
        if pid in out or not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def cpu_ticks(pids):
    """(user, kernel) ticks: utime and stime summed."""
    user = kernel = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
            user, kernel = user + int(f[11]), kernel + int(f[12])
        except (OSError, ValueError, IndexError):
            pass
    return user, kernel


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def sample(roots):
    pids = tree(roots)
    user, kernel = cpu_ticks(pids)
    return {"ticks": user + kernel, "sys_ticks": kernel, "rss_kb": rss_kb(pids), "pids": pids}


def affinity(roots):
    """CPUs each thread of each process in the trees may run on."""
    out = {}
    for pid in tree(roots):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
                out[f"{pid}/{tid} {fields.get('Name', '?')}"] = fields.get("Cpus_allowed_list", "?")
            except OSError:
                pass
    return out


def main(argv):
    if len(argv) < 2 or argv[0] not in ("sample", "affinity"):
        sys.exit("usage: procstat.py sample|affinity PID...")
    fn = sample if argv[0] == "sample" else affinity
    print(json.dumps(fn(argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
