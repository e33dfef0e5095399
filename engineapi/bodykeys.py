"""The keys of Engine API request bodies, spelled as Docker spells them, and matched as dockerd's Go
decoder matches them: whatever their case.

Theory of operation: Go's encoding/json fills a struct field from a JSON key equal to the field's
name ignoring case, so dockerd takes `{"rollbackconfig": {"order": "start-first"}}` (docker-py's
`RollbackConfig(order=...)` sends that) as `RollbackConfig.Order`. `canonical_keys(body, shape)`
does the same before any validation: it walks the body along a shape that names the known keys
of each object, and renames a key that matches one of them ignoring case to Docker's spelling.
Maps whose keys are the user's (Labels, Options, DriverOpts, Sysctls) are copied as they are,
and so are unknown keys (the validators refuse or ignore them, as before). When one body spells
a field twice, the later one wins, as in Go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Obj:
    """A JSON object with known keys; each key maps to the shape of its value (None: a scalar)."""
    fields: dict[str, Shape]
    folded: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        folded = {name.lower(): name for name in self.fields}
        if len(folded) != len(self.fields):
            raise ValueError(f"two keys differ only in case: {sorted(self.fields)}")
        object.__setattr__(self, "folded", folded)


@dataclass(frozen=True)
class ListOf:
    item: Shape


@dataclass(frozen=True)
class MapOf:
    """An object whose keys are data (labels, options): kept as sent; values have `value`'s shape."""
    value: Shape = None


Shape = Obj | ListOf | MapOf | None


def canonical_keys(value: Any, shape: Shape) -> Any:
    """`value` with every known key spelled as Docker spells it (a new value; `value` is not changed)."""
    if isinstance(shape, Obj) and isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = key if key in shape.fields or not isinstance(key, str) else shape.folded.get(key.lower(), key)
            out.pop(name, None)                  # the later spelling wins, and takes the later place
            out[name] = canonical_keys(item, shape.fields[name]) if name in shape.fields else item
        return out
    if isinstance(shape, ListOf) and isinstance(value, list):
        return [canonical_keys(item, shape.item) for item in value]
    if isinstance(shape, MapOf) and isinstance(value, dict):
        return {key: canonical_keys(item, shape.value) for key, item in value.items()}
    return value


def obj(**fields: Shape) -> Obj:
    return Obj(fields)


TEXT_MAP = MapOf()
DRIVER = obj(Name=None, Options=TEXT_MAP)

# -- ServiceSpec (moby api/types/swarm: service.go, task.go, container.go, network.go) -------------
FILE_TARGET = obj(Name=None, UID=None, GID=None, Mode=None)
MOUNT = obj(
    Type=None, Source=None, Target=None, ReadOnly=None, Consistency=None,
    BindOptions=obj(Propagation=None, NonRecursive=None, CreateMountpoint=None, ReadOnlyNonRecursive=None,
                    ReadOnlyForceRecursive=None),
    VolumeOptions=obj(NoCopy=None, Labels=TEXT_MAP, Subpath=None, DriverConfig=DRIVER),
    ImageOptions=obj(Subpath=None),
    TmpfsOptions=obj(SizeBytes=None, Mode=None, Options=None),
    ClusterOptions=obj(),
)
PRIVILEGES = obj(
    CredentialSpec=obj(Config=None, File=None, Registry=None),
    SELinuxContext=obj(Disable=None, User=None, Role=None, Type=None, Level=None),
    Seccomp=obj(Mode=None, Profile=None),
    AppArmor=obj(Mode=None),
    NoNewPrivileges=None,
)
CONTAINER_SPEC = obj(
    Image=None, Labels=TEXT_MAP, Command=None, Args=None, Hostname=None, Env=None, Dir=None, User=None,
    Groups=None, Privileges=PRIVILEGES, Init=None, StopSignal=None, TTY=None, OpenStdin=None, ReadOnly=None,
    Mounts=ListOf(MOUNT), StopGracePeriod=None,
    Healthcheck=obj(Test=None, Interval=None, Timeout=None, Retries=None, StartPeriod=None, StartInterval=None),
    Hosts=None, DNSConfig=obj(Nameservers=None, Search=None, Options=None),
    Secrets=ListOf(obj(File=FILE_TARGET, SecretID=None, SecretName=None)),
    Configs=ListOf(obj(File=FILE_TARGET, Runtime=obj(), ConfigID=None, ConfigName=None)),
    Isolation=None, Sysctls=TEXT_MAP, CapabilityAdd=None, CapabilityDrop=None,
    Ulimits=ListOf(obj(Name=None, Soft=None, Hard=None)), OomScoreAdj=None,
)
NETWORK_ATTACHMENT = obj(Target=None, Aliases=None, DriverOpts=TEXT_MAP)
RESOURCES = obj(NanoCPUs=None, MemoryBytes=None, Pids=None)
GENERIC_RESOURCE = obj(NamedResourceSpec=obj(Kind=None, Value=None), DiscreteResourceSpec=obj(Kind=None, Value=None))
PLATFORM = obj(Architecture=None, OS=None)
TASK_SPEC = obj(
    ContainerSpec=CONTAINER_SPEC,
    PluginSpec=obj(Name=None, Remote=None, Privileges=ListOf(obj(Name=None, Description=None, Value=None)),
                   Disabled=None, Env=None),
    NetworkAttachmentSpec=obj(ContainerID=None),
    Resources=obj(Limits=RESOURCES,
                  Reservations=obj(NanoCPUs=None, MemoryBytes=None, GenericResources=ListOf(GENERIC_RESOURCE))),
    RestartPolicy=obj(Condition=None, Delay=None, MaxAttempts=None, Window=None),
    Placement=obj(Constraints=None, Preferences=ListOf(obj(Spread=obj(SpreadDescriptor=None))),
                  MaxReplicas=None, Platforms=ListOf(PLATFORM)),
    Networks=ListOf(NETWORK_ATTACHMENT),
    LogDriver=DRIVER,
    ForceUpdate=None,
    Runtime=None,
)
UPDATE_CONFIG = obj(Parallelism=None, Delay=None, FailureAction=None, Monitor=None, MaxFailureRatio=None,
                    Order=None)
SERVICE_SPEC = obj(
    Name=None, Labels=TEXT_MAP, TaskTemplate=TASK_SPEC,
    Mode=obj(Replicated=obj(Replicas=None), Global=obj(), ReplicatedJob=obj(MaxConcurrent=None, TotalCompletions=None),
             GlobalJob=obj()),
    UpdateConfig=UPDATE_CONFIG, RollbackConfig=UPDATE_CONFIG,
    Networks=ListOf(NETWORK_ATTACHMENT),
    EndpointSpec=obj(Mode=None, Ports=ListOf(obj(Name=None, Protocol=None, TargetPort=None, PublishedPort=None,
                                                 PublishMode=None))),
)

# -- nodes, the swarm, secrets, configs, networks -----------------------------------------------
NODE_SPEC = obj(Name=None, Labels=TEXT_MAP, Role=None, Availability=None)
SWARM_SPEC = obj(
    Name=None, Labels=TEXT_MAP,
    Orchestration=obj(TaskHistoryRetentionLimit=None, Rebalance=None),     # Rebalance: shoal's own
    Raft=obj(SnapshotInterval=None, KeepOldSnapshots=None, LogEntriesForSlowFollowers=None, ElectionTick=None,
             HeartbeatTick=None),
    Dispatcher=obj(HeartbeatPeriod=None),
    CAConfig=obj(NodeCertExpiry=None, ExternalCAs=ListOf(obj(Protocol=None, URL=None, Options=TEXT_MAP, CACert=None)),
                 SigningCACert=None, SigningCAKey=None, ForceRotate=None),
    TaskDefaults=obj(LogDriver=DRIVER),
    EncryptionConfig=obj(AutoLockManagers=None),
)
SWARM_INIT = obj(ListenAddr=None, AdvertiseAddr=None, DataPathAddr=None, DataPathPort=None, ForceNewCluster=None,
                 Spec=SWARM_SPEC, AutoLockManagers=None, Availability=None, DefaultAddrPool=None, SubnetSize=None)
SWARM_JOIN = obj(ListenAddr=None, AdvertiseAddr=None, DataPathAddr=None, RemoteAddrs=None, JoinToken=None,
                 Availability=None)
SWARM_UNLOCK = obj(UnlockKey=None)
SECRET_SPEC = obj(Name=None, Labels=TEXT_MAP, Data=None, Driver=DRIVER, Templating=DRIVER)
CONFIG_SPEC = obj(Name=None, Labels=TEXT_MAP, Data=None, Templating=DRIVER)
NETWORK_CREATE = obj(
    Name=None, CheckDuplicate=None, Driver=None, Scope=None, EnableIPv4=None, EnableIPv6=None,
    IPAM=obj(Driver=None, Options=TEXT_MAP,
             Config=ListOf(obj(Subnet=None, IPRange=None, Gateway=None, AuxiliaryAddresses=TEXT_MAP))),
    Internal=None, Attachable=None, Ingress=None, ConfigOnly=None, ConfigFrom=obj(Network=None),
    Options=TEXT_MAP, Labels=TEXT_MAP,
)

# -- a node's own objects: volumes and exec (moby api/types: volume, container/exec.go) ----------
VOLUME_CREATE = obj(Name=None, Driver=None, DriverOpts=TEXT_MAP, Labels=TEXT_MAP, ClusterVolumeSpec=None)
EXEC_CONFIG = obj(User=None, Privileged=None, Tty=None, ConsoleSize=None, AttachStdin=None, AttachStderr=None,
                  AttachStdout=None, Detach=None, DetachKeys=None, Env=None, WorkingDir=None, Cmd=None)
EXEC_START = obj(Detach=None, Tty=None, ConsoleSize=None)

# -- standalone containers and local networks (moby api/types/container: config.go, hostconfig.go;
# api/types/network: endpoint.go; the connect/disconnect bodies) -----------------------------------
ENDPOINT_SETTINGS = obj(
    IPAMConfig=obj(IPv4Address=None, IPv6Address=None, LinkLocalIPs=None), Links=None, Aliases=None, MacAddress=None,
    DriverOpts=TEXT_MAP, GwPriority=None, NetworkID=None, EndpointID=None, Gateway=None, IPAddress=None,
    IPPrefixLen=None, IPv6Gateway=None, GlobalIPv6Address=None, GlobalIPv6PrefixLen=None, DNSNames=None,
)
HOST_CONFIG = obj(
    Binds=None, ContainerIDFile=None, LogConfig=obj(Type=None, Config=TEXT_MAP), NetworkMode=None,
    PortBindings=MapOf(ListOf(obj(HostIp=None, HostPort=None))), RestartPolicy=obj(Name=None, MaximumRetryCount=None),
    AutoRemove=None, VolumeDriver=None, VolumesFrom=None, ConsoleSize=None, Annotations=TEXT_MAP, CapAdd=None,
    CapDrop=None, CgroupnsMode=None, Dns=None, DnsOptions=None, DnsSearch=None, ExtraHosts=None, GroupAdd=None,
    IpcMode=None, Cgroup=None, Links=None, OomScoreAdj=None, PidMode=None, Privileged=None, PublishAllPorts=None,
    ReadonlyRootfs=None, SecurityOpt=None, StorageOpt=TEXT_MAP, Tmpfs=TEXT_MAP, UTSMode=None, UsernsMode=None,
    ShmSize=None, Sysctls=TEXT_MAP, Runtime=None, Isolation=None, CpuShares=None, Memory=None, NanoCpus=None,
    CgroupParent=None, BlkioWeight=None, CpuPeriod=None, CpuQuota=None, CpuRealtimePeriod=None, CpuRealtimeRuntime=None,
    CpusetCpus=None, CpusetMems=None,
    Devices=ListOf(obj(PathOnHost=None, PathInContainer=None, CgroupPermissions=None)),
    DeviceCgroupRules=None, MemoryReservation=None, MemorySwap=None, MemorySwappiness=None, OomKillDisable=None,
    PidsLimit=None, Ulimits=ListOf(obj(Name=None, Soft=None, Hard=None)), CpuCount=None, CpuPercent=None,
    Mounts=ListOf(MOUNT), MaskedPaths=None, ReadonlyPaths=None, Init=None,
)
CONTAINER_CREATE = obj(
    Hostname=None, Domainname=None, User=None, AttachStdin=None, AttachStdout=None, AttachStderr=None,
    ExposedPorts=MapOf(obj()), Tty=None, OpenStdin=None, StdinOnce=None, Env=None, Cmd=None,
    Healthcheck=obj(Test=None, Interval=None, Timeout=None, Retries=None, StartPeriod=None, StartInterval=None),
    ArgsEscaped=None, Image=None, Volumes=MapOf(obj()), WorkingDir=None, Entrypoint=None, NetworkDisabled=None,
    MacAddress=None, OnBuild=None, Labels=TEXT_MAP, StopSignal=None, StopTimeout=None, Shell=None,
    HostConfig=HOST_CONFIG, NetworkingConfig=obj(EndpointsConfig=MapOf(ENDPOINT_SETTINGS)),
)
NETWORK_CONNECT = obj(Container=None, EndpointConfig=ENDPOINT_SETTINGS)
NETWORK_DISCONNECT = obj(Container=None, Force=None)
