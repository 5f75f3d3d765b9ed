// Co-simulation bridge: a role top verilated with this main, served on a Unix socket.
//
// Built and started by mozi.sim.rtl_server (never by hand):
//
//     <binary> SOCKET [STATS]
//
// connects to the Unix socket SOCKET (the host's RtlTransport listens on it) and moves the link
// protocol's bytes both ways: socket -> the top's WidePort input beats, output beats -> socket.
// The clock runs here, in C++, one eval per edge; nothing crosses into Python. When the top is
// idle and no input is pending the bridge blocks on the socket, so the simulation does not
// advance while the host thinks. The socket closing ends the simulation. STATS, if given,
// receives at exit JSON with the clock cycles simulated, the bytes moved, the wall time and
// how many times the bridge waited for the host.

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

namespace {

// Clocks between two looks at the socket while the top works and no input is queued.
constexpr uint64_t POLL_INTERVAL = 64;

uint64_t cycles = 0;

void tick(Vtop &top) {
    top.clk = 0;
    top.eval();
    top.clk = 1;
    top.eval();
    ++cycles;
}

// Bytes the host has sent: wait for them when `block`, else only those already there.
// Returns false when the host has closed the socket.
bool receive(int fd, std::vector<uint8_t> &pending, bool block) {
    pollfd p{fd, POLLIN, 0};
    int ready = poll(&p, 1, block ? -1 : 0);
    if (ready <= 0)
        return ready == 0 || !block;
    uint8_t buf[1 << 16];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
        return false;
    pending.insert(pending.end(), buf, buf + n);
    return true;
}

bool send_all(int fd, const std::vector<uint8_t> &data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        done += static_cast<size_t>(n);
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s SOCKET [STATS]\n", argv[0]);
        return 2;
    }
    const char *stats_path = argc > 2 ? argv[2] : nullptr;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) {
        std::perror("rtl_bridge: connect");
        return 1;
    }

    auto context = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vtop>(context.get());
    const unsigned width = sizeof top->in_data;  // bytes per beat
    // no reset: the top's registers start at their initial values, as after configuration
    top->in_valid = 0;
    top->out_ready = 1;
    top->clk = 1;
    top->eval();

    std::vector<uint8_t> pending, out;
    uint64_t moved_in = 0, moved_out = 0, waits = 0, since_poll = 0;
    unsigned chunk = 0;
    bool in_valid = false;
    auto start = std::chrono::steady_clock::now();
    for (;;) {
        // the outputs as they stand before the next rising edge
        bool took_in = in_valid && top->in_ready;
        bool out_valid = top->out_valid;
        if (!out.empty() && top->out_quiet) {  // a response is complete: forward it
            if (!send_all(fd, out))
                break;
            moved_out += out.size();
            out.clear();
        }
        if (!out_valid && !took_in && !in_valid && top->idle) {  // idle: wait for the host
            ++waits;
            if (!receive(fd, pending, true))
                break;
            since_poll = 0;
        }
        if (out_valid) {  // out_ready is always 1: the beat is taken at this edge
            unsigned count = top->out_count;
            for (unsigned k = 0; k < count; ++k)
                out.push_back(static_cast<uint8_t>(top->out_data[k / 4] >> (8 * (k % 4))));
        }
        tick(*top);
        if (took_in) {
            pending.erase(pending.begin(), pending.begin() + chunk);
            moved_in += chunk;
            in_valid = false;
        }
        if (!in_valid) {
            if (pending.empty() && ++since_poll >= POLL_INTERVAL) {
                since_poll = 0;
                if (!receive(fd, pending, false))
                    break;
            }
            if (!pending.empty()) {
                chunk = pending.size() < width ? static_cast<unsigned>(pending.size()) : width;
                for (unsigned w = 0; w < width / 4; ++w) {
                    uint32_t word = 0;
                    for (unsigned b = 0; b < 4; ++b) {
                        unsigned k = 4 * w + b;
                        if (k < chunk)
                            word |= static_cast<uint32_t>(pending[k]) << (8 * b);
                    }
                    top->in_data[w] = word;
                }
                top->in_count = chunk;
                in_valid = true;
            }
            top->in_valid = in_valid;
            top->eval();
        }
    }
    close(fd);
    top->final();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (stats_path) {
        if (FILE *f = std::fopen(stats_path, "w")) {
            std::fprintf(f,
                         "{\"cycles\": %llu, \"bytes_in\": %llu, \"bytes_out\": %llu, "
                         "\"wall_s\": %.3f, \"waits\": %llu}\n",
                         static_cast<unsigned long long>(cycles),
                         static_cast<unsigned long long>(moved_in),
                         static_cast<unsigned long long>(moved_out), wall,
                         static_cast<unsigned long long>(waits));
            std::fclose(f);
        }
    }
    return 0;
}
