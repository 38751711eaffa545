// containers: a C++ workload whose allocations come from the standard containers — a
// word index (std::map of std::string to std::vector), an LRU cache (std::unordered_map +
// std::list), polymorphic objects behind std::unique_ptr and std::shared_ptr, and string
// building.  Deterministic for a given --rounds.
//
//   containers [--rounds N]
//
// SPDX-License-Identifier: MIT OR Apache-2.0
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace
{

struct Rng {
        uint64_t s;
        uint64_t next()
        {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                return s * 0x2545F4914F6CDD1DULL;
        }
};

// Words long enough to defeat the small-string optimisation most of the time.
std::string make_word(Rng &rng)
{
        static const char letters[] = "etaoinshrdlucmfwypvbgkqjxz";
        size_t len = 6 + rng.next() % 28;
        std::string w;
        for (size_t i = 0; i < len; i++)
                w.push_back(letters[rng.next() % 26]);
        return w;
}

struct Shape {
        virtual ~Shape() = default;
        virtual double area() const = 0;
};
struct Rect : Shape {
        double w, h;
        Rect(double a, double b) : w(a), h(b)
        {
        }
        double area() const override
        {
                return w * h;
        }
};
struct Poly : Shape {
        std::vector<double> xs, ys;
        explicit Poly(size_t n, Rng &rng)
        {
                for (size_t i = 0; i < n; i++) {
                        xs.push_back(double(rng.next() % 100));
                        ys.push_back(double(rng.next() % 100));
                }
        }
        double area() const override
        {
                double a = 0;
                for (size_t i = 0, j = xs.size() - 1; i < xs.size(); j = i++)
                        a += (xs[j] + xs[i]) * (ys[j] - ys[i]);
                return a / 2;
        }
};

class Lru
{
      public:
        explicit Lru(size_t cap) : cap_(cap)
        {
        }
        void put(uint64_t key, std::string value)
        {
                auto it = map_.find(key);
                if (it != map_.end()) {
                        order_.erase(it->second.second);
                        map_.erase(it);
                }
                order_.push_front(key);
                map_.emplace(key, std::make_pair(std::move(value), order_.begin()));
                if (map_.size() > cap_) {
                        map_.erase(order_.back());
                        order_.pop_back();
                }
        }
        size_t hits(uint64_t key) const
        {
                return map_.count(key);
        }

      private:
        size_t cap_;
        std::list<uint64_t> order_;
        std::unordered_map<uint64_t, std::pair<std::string, std::list<uint64_t>::iterator>> map_;
};

uint64_t word_index(Rng &rng, size_t words)
{
        std::map<std::string, std::vector<uint32_t>> index;
        for (size_t i = 0; i < words; i++)
                index[make_word(rng)].push_back(uint32_t(i));
        uint64_t sum = 0;
        for (const auto &kv : index)
                sum += kv.first.size() * kv.second.size();
        return sum;
}

uint64_t cache(Rng &rng, size_t ops)
{
        Lru lru(2000);
        uint64_t hits = 0;
        for (size_t i = 0; i < ops; i++) {
                uint64_t key = rng.next() % 5000;
                hits += lru.hits(key);
                lru.put(key, "value-" + std::to_string(key) + "-" + make_word(rng));
        }
        return hits;
}

double shapes(Rng &rng, size_t n)
{
        std::vector<std::unique_ptr<Shape>> owned;
        std::vector<std::shared_ptr<Shape>> shared;
        double total = 0;
        for (size_t i = 0; i < n; i++) {
                if (rng.next() % 3 == 0)
                        owned.push_back(std::make_unique<Poly>(3 + rng.next() % 12, rng));
                else
                        owned.push_back(std::make_unique<Rect>(double(i % 7), 2.0));
                if (i % 4 == 0)
                        shared.push_back(std::make_shared<Rect>(1.0, double(i % 5)));
        }
        for (const auto &s : owned)
                total += s->area();
        for (const auto &s : shared)
                total += s->area();
        return total;
}

size_t strings(Rng &rng, size_t n)
{
        std::vector<std::string> lines;
        for (size_t i = 0; i < n; i++) {
                std::string line;
                for (int k = 0; k < 6; k++)
                        line += make_word(rng) + (k < 5 ? "," : "");
                lines.push_back(std::move(line));
        }
        size_t len = 0;
        for (const auto &l : lines)
                len += l.size();
        return len;
}

} // namespace

int main(int argc, char **argv)
{
        long rounds = 12;
        for (int i = 1; i + 1 < argc; i += 2) {
                if (std::strcmp(argv[i], "--rounds") == 0) {
                        rounds = std::atol(argv[i + 1]);
                } else {
                        std::fprintf(stderr, "usage: containers [--rounds N]\n");
                        return 2;
                }
        }
        Rng rng{0x243F6A8885A308D3ULL};
        uint64_t sum = 0;
        double area = 0;
        for (long r = 0; r < rounds; r++) {
                sum += word_index(rng, 20000);
                sum += cache(rng, 20000);
                area += shapes(rng, 20000);
                sum += strings(rng, 5000);
        }
        std::printf("containers: %ld rounds, checksum %llu, area %.1f\n", rounds,
                    (unsigned long long)sum, area);
        return 0;
}
