# -*- coding: utf-8 -*-
# Copyright: the cohort authors. MIT OR Apache-2.0.
"""Test harness only: reach a local container (systemd-nspawn) through nsenter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks inside a local container through nsenter
description:
  - Runs every command in all the namespaces (mount, pid, network, ...) of a
    process on the controller, usually the PID 1 of a systemd-nspawn
    container, with a clean environment. Files are copied in and out
    through C(cat) inside the container.
  - Used by cohort's tests (tests/ansible_playbook.rs), where the containers
    have no SSH; needs root on the controller.
author: cohort authors
options:
  pid:
    description: The process whose namespaces are entered (the container's PID 1 as the host sees it).
    type: int
    required: true
    vars:
      - name: ansible_nsenter_pid
  nsenter:
    description: The nsenter executable.
    type: str
    default: nsenter
    vars:
      - name: ansible_nsenter_exe
extends_documentation_fragment:
  - connection_pipelining
"""

import os
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root", "USER=root", "LOGNAME=root"]


class Connection(ConnectionBase):
    transport = "nsenter"
    has_pipelining = True
    has_tty = False

    def _argv(self, *command):
        pid = self.get_option("pid")
        return [self.get_option("nsenter"), "-t", str(pid), "-a", "env", "-i"] + ENV + list(command)

    def _connect(self):
        if not self._connected:
            pid = self.get_option("pid")
            if not os.path.exists("/proc/%s/ns/mnt" % pid):
                raise AnsibleConnectionFailure("no process %s to enter" % pid)
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        argv = self._argv("/bin/sh", "-c", cmd)
        display.vvv("EXEC %s" % argv, host=self._play_context.remote_addr)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        self._connect()
        if not os.path.exists(to_bytes(in_path)):
            raise AnsibleFileNotFound("file or module does not exist: %s" % in_path)
        with open(to_bytes(in_path), "rb") as source:
            proc = subprocess.Popen(self._argv("/bin/sh", "-c", 'cat > "$1"', "put", out_path),
                                    stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError("failed to put %s to %s: %s" % (in_path, out_path, stderr.decode(errors="replace")))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._connect()
        with open(to_bytes(out_path), "wb") as target:
            proc = subprocess.Popen(self._argv("/bin/cat", in_path), stdin=subprocess.DEVNULL,
                                    stdout=target, stderr=subprocess.PIPE)
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError("failed to fetch %s to %s: %s" % (in_path, out_path, stderr.decode(errors="replace")))

    def close(self):
        self._connected = False
