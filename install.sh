#!/bin/sh
# Install (or upgrade, or remove) the SimpleServerStatus agent on a Debian or Ubuntu box.
#
#   curl -fsSL http://DASHBOARD:8900/install.sh | sh -s -- --id ID --secret SECRET
#
# Run it as root. Run by another user it starts itself again with sudo where there is
# sudo, and otherwise says what it needs (or installs for that user with --prefix,
# --env-file and --no-systemd).
# The dashboard serves this file with its own address filled in below, and serves
# agent.py and the systemd unit too: nothing is fetched from anywhere else but the
# distribution's and PyPI's packages.
set -eu

DASHBOARD_URL="__SSS_DASHBOARD_URL__"  # filled in by the dashboard that serves this file
PREFIX=/opt/sss-agent
ENV_FILE=
SERVER=
ID=
SECRET=
SYSTEMD=auto
SYSTEM_SITE=no
FORCE_VENV=no
UNINSTALL=no
AUTO_UPDATE=
UNIT_DIR=/etc/systemd/system
STEP="starting"
FRESH=no

usage() {
    cat <<EOF
Usage: install.sh --id ID --secret SECRET [options]

  --id ID              this server's id in the dashboard's servers.json
  --secret SECRET      its secret (kept in the env file, mode 600)
  --dashboard URL      dashboard to fetch the agent from and report to (default: $DASHBOARD_URL)
  --server URL         report to this ws:// or wss:// URL instead of DASHBOARD/ws-report
  --prefix DIR         install into DIR (default /opt/sss-agent)
  --env-file FILE      settings file (default /etc/sss-agent.env, or DIR/sss-agent.env with --prefix)
  --no-systemd         do not install the service; print how to start the agent
  --venv               install websockets into a virtual environment even where the
                       distribution ships python3-websockets 10.1 or newer
  --system-site-packages
                       let the agent's venv use Debian's python3-psutil and python3-websockets
  --auto-update        run the agent.py the dashboard serves whenever it offers a new one
                       (servers.json "agentUpdates"; over https, or on this machine only)
  --uninstall          remove everything this script installed
  -h, --help           this text

Running it again upgrades agent.py in place and keeps the settings unless new ones are given.
EOF
}

say() { printf 'sss-agent: %s\n' "$*"; }
fail() {
    printf 'sss-agent: failed while %s: %s\n' "$STEP" "$1" >&2
    [ $# -gt 1 ] && printf 'sss-agent: %s\n' "$2" >&2
    if [ "$FRESH" = yes ] && [ -d "$PREFIX" ]; then
        rm -rf "$PREFIX"  # nothing half-installed stays behind
        say "removed the partial install in $PREFIX" >&2
    fi
    exit 1
}

quote() {  # quote WORD: WORD in single quotes, for eval
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}
ARGS=
for arg in "$@"; do ARGS="$ARGS $(quote "$arg")"; done

while [ $# -gt 0 ]; do
    case "$1" in
        --id) ID=${2:?--id needs a value}; shift 2 ;;
        --secret) SECRET=${2:?--secret needs a value}; shift 2 ;;
        --dashboard) DASHBOARD_URL=${2:?--dashboard needs a URL}; shift 2 ;;
        --server) SERVER=${2:?--server needs a URL}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --env-file) ENV_FILE=${2:?--env-file needs a path}; shift 2 ;;
        --no-systemd) SYSTEMD=no; shift ;;
        --system-site-packages) SYSTEM_SITE=yes; FORCE_VENV=yes; shift ;;
        --venv) FORCE_VENV=yes; shift ;;
        --uninstall) UNINSTALL=yes; shift ;;
        --auto-update) AUTO_UPDATE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; printf '\nsss-agent: unknown option %s\n' "$1" >&2; exit 2 ;;
    esac
done

if [ -z "$ENV_FILE" ]; then
    if [ "$PREFIX" = /opt/sss-agent ]; then ENV_FILE=/etc/sss-agent.env; else ENV_FILE="$PREFIX/sss-agent.env"; fi
fi
if [ "$SYSTEMD" = auto ]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then SYSTEMD=yes; else SYSTEMD=no; fi
fi
UNIT="$UNIT_DIR/sss-agent.service"
MARKER=.installed-by-sss-install.sh  # --uninstall removes only a prefix that holds it

# Values go into the env file in single quotes, which sh (the printed start command) and
# systemd (EnvironmentFile=) both read literally, as long as these characters stay out.
check_value() {  # check_value OPTION VALUE
    case "$2" in
        *[\'\"\\\$\`[:space:][:cntrl:]]*)
            fail "$1 contains a quote, backslash, \$, backtick, space or control character" \
                "the env file could not hold it literally; use letters, digits and - _ . ~ + / = : @ ! # % & * ( ) , ; ? [ ]" ;;
    esac
}
check_path() {  # check_path OPTION PATH: absolute, and plain enough for the unit and sed
    case "$2" in
        /*) ;;
        *) fail "$1 must be an absolute path, got $2" ;;
    esac
    case "$2" in
        *[!A-Za-z0-9._/+-]*) fail "$1 may hold only letters, digits and . _ / + -" "choose another directory" ;;
    esac
}

uninstall() {
    STEP="uninstalling"
    [ -f "$PREFIX/$MARKER" ] ||
        fail "$PREFIX was not installed by install.sh (no $MARKER in it); nothing removed" "pass the --prefix it was installed with"
    if [ "$SYSTEMD" = yes ] && [ -f "$UNIT" ]; then
        systemctl disable --now sss-agent.service >/dev/null 2>&1 || true
        rm -f "$UNIT"
        systemctl daemon-reload
    fi
    rm -rf "$PREFIX"
    rm -f "$ENV_FILE"
    say "removed $PREFIX and $ENV_FILE"
}

fetch() {  # fetch URL FILE: curl, wget or python3, whichever this box has
    if command -v curl >/dev/null 2>&1; then curl -fsSL "$1" -o "$2"
    elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
    else python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi
}

env_value() {  # env_value NAME: the value NAME has in the existing env file, if any
    [ -f "$ENV_FILE" ] && sed -n "s/^$1='\{0,1\}\([^']*\)'\{0,1\}\$/\1/p" "$ENV_FILE" | tail -n 1
    return 0
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

WEBSOCKETS_OK='import re, websockets, sys; sys.exit(tuple(int(x) for x in re.findall(r"\d+", websockets.__version__)[:2]) < (10, 1))'

make_venv() {  # make_venv [--system-site-packages]
    rm -rf "$PREFIX/venv"
    python3 -m venv "$@" "$PREFIX/venv" >/dev/null 2>&1
}

writable() {  # writable PATH: PATH, or the nearest folder above it that exists, is writable
    target=$1
    while [ ! -e "$target" ]; do target=$(dirname "$target"); done
    [ -w "$target" ]
}

# Root is needed for the service and for folders this user cannot write. As root, nothing
# more is needed (no sudo); otherwise sudo runs this script again, or it says what to do.
if [ "$(id -u)" -ne 0 ] && { [ "$SYSTEMD" = yes ] || ! writable "$PREFIX" || ! writable "$ENV_FILE"; }; then
    if command -v sudo >/dev/null 2>&1; then
        SCRIPT=$0
        if [ ! -f "$SCRIPT" ]; then  # read from a pipe: fetch this script again to run it
            SCRIPT=$(mktemp)
            if ! fetch "${DASHBOARD_URL%/}/install.sh" "$SCRIPT" 2>/dev/null; then
                printf 'sss-agent: this needs root: run it as root, or pipe it to "sudo sh"\n' >&2
                exit 1
            fi
        fi
        say "installing into $PREFIX needs root: running it again with sudo"
        eval "exec sudo sh \"\$SCRIPT\" $ARGS"
    fi
    printf 'sss-agent: installing into %s%s needs root, and there is no sudo here.\n' "$PREFIX" \
        "$([ "$SYSTEMD" = yes ] && printf ' as a service')" >&2
    printf 'sss-agent: run it as root (for example in "su -" first), or install for this user with\n' >&2
    # shellcheck disable=SC2016  # $HOME is for the reader's shell, not this one
    printf 'sss-agent:   --prefix $HOME/sss-agent --env-file $HOME/sss-agent/sss-agent.env --no-systemd\n' >&2
    exit 1
fi

STEP="checking the options"
check_path --prefix "$PREFIX"
check_path --env-file "$ENV_FILE"
if [ "$UNINSTALL" = yes ]; then uninstall; exit 0; fi

# Settings: new values win, otherwise keep what an earlier install wrote.
STEP="reading the settings"
case "$DASHBOARD_URL" in __SSS*) DASHBOARD_URL= ;; esac
DASHBOARD_URL=${DASHBOARD_URL%/}
if [ -z "$SERVER" ] && [ -n "$DASHBOARD_URL" ]; then
    SERVER="$(printf '%s' "$DASHBOARD_URL" | sed 's#^http:#ws:#; s#^https:#wss:#')/ws-report"
fi
SERVER=${SERVER:-$(env_value SSS_SERVER)}
ID=${ID:-$(env_value SSS_ID)}
SECRET=${SECRET:-$(env_value SSS_SECRET)}
AUTO_UPDATE=${AUTO_UPDATE:-$(env_value SSS_AUTO_UPDATE)}
[ -n "$ID" ] || fail "no --id given" "pass --id with this server's id from the dashboard's servers.json"
[ -n "$SECRET" ] || fail "no --secret given" "pass --secret with this server's secret from servers.json"
[ -n "$SERVER" ] || fail "no dashboard known" "pass --dashboard http://HOST:8900"
[ -n "$DASHBOARD_URL" ] || DASHBOARD_URL=$(printf '%s' "${SERVER%/ws-report}" | sed 's#^ws:#http:#; s#^wss:#https:#')
check_value --id "$ID"
check_value --secret "$SECRET"
check_value --server "$SERVER"

STEP="checking python3"
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 || fail "python3 is missing" "install Python 3.9 or newer, then run this again"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    fail "python3 is older than 3.9" "install Python 3.9 or newer, then run this again"

[ -d "$PREFIX" ] || FRESH=yes
mkdir -p "$PREFIX" || fail "cannot create $PREFIX" "run as root (sudo sh) or pass --prefix"

# Where the distribution ships websockets 10.1 or newer (Debian 12, Ubuntu 22.04 and
# later), the agent runs on the system python3 with it: no venv, no pip, no compiler.
# On Linux it needs nothing else (it reads /proc). Older ones get a virtual environment.
SYSTEM_PYTHON=/usr/bin/python3
PYTHON="$PREFIX/venv/bin/python3"
if [ "$FORCE_VENV" = no ] && [ -x "$SYSTEM_PYTHON" ]; then
    STEP="installing python3-websockets with apt-get"
    if "$SYSTEM_PYTHON" -c "$WEBSOCKETS_OK" 2>/dev/null ||
            { apt_install python3-websockets && "$SYSTEM_PYTHON" -c "$WEBSOCKETS_OK" 2>/dev/null; }; then
        PYTHON=$SYSTEM_PYTHON
        rm -rf "$PREFIX/venv"  # an earlier install's, now unused
        say "using the system python3 with the distribution's websockets"
    fi
fi

if [ "$PYTHON" != "$SYSTEM_PYTHON" ]; then
    STEP="creating the virtual environment in $PREFIX/venv"
    SITE=
    [ "$SYSTEM_SITE" = yes ] && SITE=--system-site-packages
    # shellcheck disable=SC2086  # $SITE is one optional word
    if ! make_venv $SITE; then
        apt_install python3-venv || fail "python3 -m venv does not work" "apt-get install python3-venv, then run this again"
        # shellcheck disable=SC2086
        make_venv $SITE || fail "python3 -m venv does not work" "apt-get install python3-venv, then run this again"
    fi

    STEP="installing websockets"
    PIP="$PYTHON -m pip install -q --disable-pip-version-check"
    $PIP "websockets>=10.1" >/dev/null 2>&1 || fail "pip could not install websockets" "check that this box can reach PyPI"
fi

STEP="downloading agent.py from $DASHBOARD_URL"
fetch "$DASHBOARD_URL/agent.py" "$PREFIX/agent.py.new" ||
    fail "could not fetch $DASHBOARD_URL/agent.py" "check that the dashboard is reachable from here"
"$PYTHON" "$PREFIX/agent.py.new" --version >/dev/null 2>&1 ||
    fail "the downloaded agent.py does not run" "check $DASHBOARD_URL/agent.py in a browser"
mv "$PREFIX/agent.py.new" "$PREFIX/agent.py"
# An agent.py it updated itself to would run instead of this one: this one is newer.
rm -rf "$PREFIX/.sss-agent-update"
if [ "$SYSTEMD" = yes ]; then
    rm -f /var/lib/sss-agent/agent.py /var/lib/sss-agent/agent.py.previous /var/lib/sss-agent/trial.json
fi
# Run as `python3 -m agent` from this bytecode: compiling agent.py at every start costs memory.
"$PYTHON" -m compileall -q "$PREFIX/agent.py" >/dev/null ||
    fail "could not compile agent.py" "check that $PREFIX is writable"

STEP="checking that the dashboard accepts $ID"
# Through the environment, so the secret never shows on a command line.
if ! VERDICT=$(cd "$PREFIX" && SSS_SERVER="$SERVER" SSS_ID="$ID" SSS_SECRET="$SECRET" \
        "$PYTHON" -m agent --check 2>&1); then
    fail "$(printf '%s' "$VERDICT" | tail -n 1)" "fix --id, --secret or --dashboard (or servers.json), then run this again"
fi
say "$VERDICT"

STEP="writing $ENV_FILE"
mkdir -p "$(dirname "$ENV_FILE")"
(umask 077 && { printf "SSS_SERVER='%s'\nSSS_ID='%s'\nSSS_SECRET='%s'\n" "$SERVER" "$ID" "$SECRET" &&
    if [ "$AUTO_UPDATE" = 1 ]; then printf "SSS_AUTO_UPDATE='1'\n"; fi; } > "$ENV_FILE.new") ||
    fail "cannot write $ENV_FILE" "run as root (sudo sh) or pass --env-file"
mv "$ENV_FILE.new" "$ENV_FILE"

STEP="writing the systemd unit"
fetch "$DASHBOARD_URL/sss-agent.service" "$PREFIX/sss-agent.service.in" ||
    fail "could not fetch $DASHBOARD_URL/sss-agent.service" "check that the dashboard is reachable"
sed "s#/opt/sss-agent/venv/bin/python3#@PYTHON@#g; s#/opt/sss-agent#$PREFIX#g; s#/etc/sss-agent.env#$ENV_FILE#g; s#@PYTHON@#$PYTHON#g" \
    "$PREFIX/sss-agent.service.in" > "$PREFIX/sss-agent.service"
rm -f "$PREFIX/sss-agent.service.in"
printf 'sss-agent installed here by install.sh; env file: %s\n' "$ENV_FILE" > "$PREFIX/$MARKER"
FRESH=no  # from here on a failure leaves a working install behind

if [ "$SYSTEMD" = yes ]; then
    STEP="starting sss-agent.service"
    cp "$PREFIX/sss-agent.service" "$UNIT"
    systemctl daemon-reload
    systemctl enable sss-agent.service >/dev/null 2>&1 || fail "systemctl enable failed" "see: systemctl status sss-agent"
    systemctl restart sss-agent.service || fail "the service did not start" "see: journalctl -u sss-agent"
    say "installed and started: reporting to $SERVER as $ID (journalctl -u sss-agent -f)"
else
    say "installed in $PREFIX without systemd; start the agent with:"
    say "  set -a; . $ENV_FILE; set +a; cd $PREFIX && $PYTHON -m agent"
fi
