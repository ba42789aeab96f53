#!/bin/bash
# Example Nagios-protocol plugin: is TCP port $2 on host $1 accepting connections?
# Exit 0 OK, 2 CRITICAL, 3 UNKNOWN; first line is the message, perfdata after '|'.
host="$1"; port="$2"
if [ -z "$host" ] || [ -z "$port" ]; then
    echo "UNKNOWN: usage: check_port_open.sh HOST PORT"
    exit 3
fi
start=$(date +%s%N)
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "OK: $host:$port accepts connections | time=${ms}ms;;;0"
    exit 0
fi
echo "CRITICAL: $host:$port refuses connections"
exit 2
